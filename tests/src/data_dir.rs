//! A data directory as files: every file under it with its bytes (to prove that something
//! changed nothing), and whole copies (to damage one and keep the original).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir` (recursively), by its path relative to `dir`, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let name = path.strip_prefix(dir).expect("under dir").to_owned();
                out.insert(name, bytes);
            }
        }
    }
    out
}

/// What differs between two [`files`] listings: names only in one, and names whose bytes differ
/// (with both sizes). Empty when they are byte-identical.
pub fn differences(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, bytes) in before {
        match after.get(name) {
            None => out.push(format!("{} removed", name.display())),
            Some(now) if now != bytes => out.push(format!(
                "{} changed ({} bytes, now {})",
                name.display(),
                bytes.len(),
                now.len()
            )),
            Some(_) => {}
        }
    }
    for (name, bytes) in after {
        if !before.contains_key(name) {
            out.push(format!(
                "{} created ({} bytes)",
                name.display(),
                bytes.len()
            ));
        }
    }
    out
}

/// Copies every file under `from` to `to` (created), keeping the tree.
pub fn copy(from: &Path, to: &Path) {
    for (name, bytes) in files(from) {
        let path = to.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directory");
        }
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    std::fs::create_dir_all(to).expect("create directory");
}
