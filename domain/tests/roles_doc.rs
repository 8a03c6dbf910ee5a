//! The role table in `docs/roles.md` is the one in code.

#[test]
fn the_documented_role_table_is_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/roles.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let start = doc
        .find("<!-- role table: generated from allot_domain::roles::table() -->\n")
        .expect("start marker");
    let rest = &doc[start..];
    let body_start = rest.find('\n').expect("marker line") + 1;
    let end = rest.find("<!-- end of role table -->").expect("end marker");
    let documented = &rest[body_start..end];
    let code = allot_domain::roles::table();
    assert_eq!(
        documented, code,
        "docs/roles.md differs from the code; the table is:\n{code}"
    );
}
