//! Every kernel variant the library can launch, preprocessed and validated by naga
//! (no GPU needed). The browser test covers Tint, which is stricter in places.

use webdiffusion::kernels::all_variants;

#[test]
fn every_kernel_variant_is_valid_wgsl() {
    let variants = all_variants();
    assert!(variants.len() > 20, "expected the whole kernel suite, found {}", variants.len());
    let mut failures = Vec::new();
    for key in &variants {
        let source = key.source().unwrap_or_else(|e| panic!("{key:?}: {e}"));
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(module) => module,
            Err(e) => {
                failures.push(format!("{}:{} {:?}\n{}", key.shader, key.entry, key.defines, e.emit_to_string(&source)));
                continue;
            }
        };
        if !module.entry_points.iter().any(|ep| ep.name == key.entry) {
            failures.push(format!("{}: no entry point {} with {:?}", key.shader, key.entry, key.defines));
        }
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Err(e) = validator.validate(&module) {
            failures.push(format!("{}:{} {:?}\n{}", key.shader, key.entry, key.defines, e.emit_to_string(&source)));
        }
    }
    assert!(failures.is_empty(), "{} invalid variants:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_shader_file_is_used() {
    let used: std::collections::BTreeSet<&str> = all_variants().iter().map(|k| k.shader).collect();
    // The included helpers have no entry points of their own.
    for name in webdiffusion::shaders::names().filter(|n| !["common.wgsl", "quant.wgsl", "input_x.wgsl"].contains(n)) {
        assert!(used.contains(name), "{name} has no launcher");
    }
}
