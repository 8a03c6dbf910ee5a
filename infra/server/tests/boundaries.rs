//! The service rooms import no tool and no CLI: `allot-server` must not depend on
//! `allot-tools` or `allot-infra`, and the client library must not depend on the server. The
//! compiler enforces the rest once these manifests hold.

/// The package names a manifest's dependency tables name.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line.ends_with("dependencies]");
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name.to_owned());
            }
        }
    }
    names
}

fn manifest(relative: &str) -> String {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[test]
fn the_service_depends_on_no_tool_and_no_cli() {
    let names = dependencies(&manifest("Cargo.toml"));
    assert!(names.iter().any(|name| name == "allot-domain"), "{names:?}");
    for forbidden in ["allot-tools", "allot-infra"] {
        assert!(
            !names.iter().any(|name| name == forbidden),
            "allot-server depends on {forbidden}: {names:?}"
        );
    }
}

#[test]
fn the_client_library_depends_on_no_service_and_no_tool() {
    let names = dependencies(&manifest("../client/Cargo.toml"));
    assert!(names.iter().any(|name| name == "allot-domain"), "{names:?}");
    for forbidden in ["allot-server", "allot-tools", "allot-infra", "allot-replay"] {
        assert!(
            !names.iter().any(|name| name == forbidden),
            "allot-client depends on {forbidden}: {names:?}"
        );
    }
}
