//! The OpenAPI document in docs/openapi.json is the one the code generates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_published_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let published = std::fs::read_to_string(path).unwrap();
    assert!(
        published == rein_server::openapi_text(),
        "docs/openapi.json is stale: run `cargo run -- schema openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every reference resolves to a component.
    for r in published.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{name} is referenced but not defined"
        );
    }
}
