//! Generates the in-test EventStoreDB/KurrentDB gRPC server (`src/esdb_server/`) from the .proto
//! files that ship inside the `kurrentdb` client crate, so the server speaks exactly the protocol
//! of the client version in `Cargo.lock`. The protos are located in the cargo registry copy of the
//! crate at build time, never copied into this repository; protoc comes from
//! `protoc-bin-vendored`, so nothing has to be installed by hand.
//!
//! Lookup order for the proto directory:
//! 1. `ALLOT_KURRENTDB_PROTOS` (a directory holding `streams.proto`), for unusual setups;
//! 2. `$CARGO_HOME/registry/src/*/kurrentdb-{version}/protos` ($CARGO_HOME defaults to
//!    `~/.cargo`), with the version taken from the workspace `Cargo.lock`;
//! 3. the package's manifest path from `cargo metadata` (vendored or patched sources).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The client crate whose protocol the in-test server implements.
const CLIENT_CRATE: &str = "kurrentdb";
/// The protos the server implements; their imports (shared, status, code) come along.
const PROTOS: [&str; 3] = ["streams.proto", "serverfeatures.proto", "gossip.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed=ALLOT_KURRENTDB_PROTOS");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("tests crate has no parent directory")?
        .to_path_buf();
    let lock = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());

    let protos_dir = find_protos(&workspace, &lock)?;
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| protos_dir.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos_with_config(config, &files, &[protos_dir, well_known])?;
    Ok(())
}

fn find_protos(workspace: &Path, lock: &Path) -> Result<PathBuf, Box<dyn Error>> {
    if let Ok(dir) = std::env::var("ALLOT_KURRENTDB_PROTOS") {
        return checked(PathBuf::from(dir)).ok_or_else(|| {
            "ALLOT_KURRENTDB_PROTOS does not hold streams.proto"
                .to_string()
                .into()
        });
    }
    let version = locked_version(lock)?;
    if let Some(dir) = from_registry(&version) {
        return Ok(dir);
    }
    if let Some(dir) = from_cargo_metadata(workspace) {
        return Ok(dir);
    }
    Err(format!(
        "cannot find the .proto files of {CLIENT_CRATE} {version}: looked in \
         $CARGO_HOME/registry/src/*/{CLIENT_CRATE}-{version}/protos and via cargo metadata; \
         set ALLOT_KURRENTDB_PROTOS to the directory holding streams.proto"
    )
    .into())
}

/// The client version pinned in `Cargo.lock` (the one the workspace builds against).
fn locked_version(lock: &Path) -> Result<String, Box<dyn Error>> {
    let text = std::fs::read_to_string(lock)?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{CLIENT_CRATE}\"") {
            let version = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
                .ok_or("Cargo.lock: package entry without a version")?;
            return Ok(version.to_owned());
        }
    }
    Err(format!("{CLIENT_CRATE} is not in Cargo.lock").into())
}

fn from_registry(version: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registries = std::fs::read_dir(cargo_home.join("registry").join("src")).ok()?;
    registries
        .flatten()
        .map(|r| {
            r.path()
                .join(format!("{CLIENT_CRATE}-{version}"))
                .join("protos")
        })
        .find_map(checked)
}

fn from_cargo_metadata(workspace: &Path) -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .output()
        .ok()?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    metadata["packages"]
        .as_array()?
        .iter()
        .filter(|p| p["name"] == CLIENT_CRATE)
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| Path::new(m).parent().map(|d| d.join("protos")))
        .find_map(checked)
}

fn checked(dir: PathBuf) -> Option<PathBuf> {
    dir.join("streams.proto").is_file().then_some(dir)
}
