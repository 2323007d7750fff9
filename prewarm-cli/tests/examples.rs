//! The shipped examples parse: the EC2 Image Builder component (YAML) and
//! the Packer build (HCL), and both run prewarm's image-build steps in
//! order (pull, plan with --image, dracut).

use std::path::Path;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `pull`, `prewarm plan ... --image` and `dracut -f` appear in this order.
fn in_order(text: &str) {
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} missing"));
    assert!(at("images pull") < at("prewarm plan"));
    assert!(at("prewarm plan") < at("dracut -f"));
    assert!(text.contains("--image"));
}

#[test]
fn image_builder_component_is_valid_yaml() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&example("image-builder-prewarm.yml")).unwrap();
    assert_eq!(doc["schemaVersion"], serde_yaml::Value::from(1.0));
    let phases = doc["phases"].as_sequence().expect("phases");
    let build = phases
        .iter()
        .find(|p| p["name"] == "build")
        .expect("a build phase");
    let mut commands = String::new();
    for step in build["steps"].as_sequence().expect("steps") {
        assert_eq!(step["action"], "ExecuteBash", "{step:?}");
        for c in step["inputs"]["commands"].as_sequence().expect("commands") {
            commands.push_str(c.as_str().expect("a command string"));
            commands.push('\n');
        }
    }
    in_order(&commands);
}

#[test]
fn packer_build_is_valid_hcl() {
    let body = hcl::parse(&example("packer-prewarm.pkr.hcl")).unwrap();
    let build = body
        .blocks()
        .find(|b| b.identifier() == "build")
        .expect("a build block");
    let shell = build
        .body()
        .blocks()
        .find(|b| b.identifier() == "provisioner")
        .expect("a provisioner");
    let inline = shell
        .body()
        .attributes()
        .find(|a| a.key() == "inline")
        .expect("inline commands");
    in_order(&hcl::to_string(&hcl::Body::builder().add_attribute(inline.clone()).build()).unwrap());
}
