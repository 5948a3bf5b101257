//! Each kernel's parameters are declared in Rust (the bytes a launcher uploads) and in
//! WGSL (how the shader reads them); naga cannot see across the two. This reads the Rust
//! struct from the launcher's source and the shader's uniform struct through naga, and
//! fails on any difference in field order, names, types, offsets or size, naming both.

use std::path::PathBuf;

use webdiffusion::kernels::all_variants;

/// Each shader with a uniform block: the launcher file under crate/runtime/src/kernels/
/// and the `#[repr(C)]` struct it uploads.
const PARAMS: &[(&str, &str, &str)] = &[
    ("attention.wgsl", "attention.rs", "Params"),
    ("attention_rows.wgsl", "attention.rs", "Params"),
    ("concat.wgsl", "layout.rs", "CopyParams"),
    ("concat_pair.wgsl", "layout.rs", "PairParams"),
    ("conv2d.wgsl", "conv2d.rs", "Params"),
    ("elementwise.wgsl", "elementwise.rs", "Params"),
    ("gather.wgsl", "gather.rs", "Params"),
    ("group_norm.wgsl", "norm.rs", "GroupNormParams"),
    ("layer_norm.wgsl", "norm.rs", "LayerNormParams"),
    ("matmul.wgsl", "matmul.rs", "Params"),
    ("softmax.wgsl", "softmax.rs", "Params"),
    ("timestep_embedding.wgsl", "embedding.rs", "Params"),
    ("upsample.wgsl", "layout.rs", "UpsampleParams"),
];

/// A field as both sides describe it: name, scalar type, element count and byte offset.
#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    scalar: String,
    count: u32,
    offset: u32,
}

/// The fields and size of `#[repr(C)] struct name` in a launcher's source (4-byte
/// scalars and arrays of them, so no padding).
fn rust_struct(file: &str, name: &str) -> (Vec<Field>, u32) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/src/kernels").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = text.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("{file}: no struct {name}"));
    // The attributes and doc comment right above the struct, back to the blank line.
    let attributes = &text[text[..start].rfind("\n\n").unwrap_or(0)..start];
    assert!(attributes.contains("#[repr(C)]"), "{file}: {name} is not #[repr(C)]");
    let body = &text[start..start + text[start..].find("\n}").unwrap()];
    let mut fields = Vec::new();
    let mut offset = 0;
    for line in body.lines().skip(1) {
        let line = line.split("//").next().unwrap().trim().trim_start_matches("pub ").trim_end_matches(',');
        let Some((field, ty)) = line.split_once(':') else { continue };
        let ty = ty.trim();
        let (scalar, count) = match ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            Some(array) => {
                let (scalar, count) = array.split_once(';').unwrap();
                (scalar.trim().to_string(), count.trim().parse().unwrap())
            }
            None => (ty.to_string(), 1),
        };
        assert!(["u32", "i32", "f32"].contains(&scalar.as_str()), "{file}: {name}.{field}: type {ty} is not 4-byte scalars");
        fields.push(Field { name: field.trim().to_string(), scalar, count, offset });
        offset += 4 * count;
    }
    (fields, offset)
}

fn scalar_name(scalar: naga::Scalar) -> String {
    let kind = match scalar.kind {
        naga::ScalarKind::Uint => "u",
        naga::ScalarKind::Sint => "i",
        naga::ScalarKind::Float => "f",
        other => return format!("{other:?}"),
    };
    format!("{kind}{}", scalar.width * 8)
}

/// The fields and size of the struct a shader's uniform variable has.
fn wgsl_struct(module: &naga::Module) -> Option<(Vec<Field>, u32)> {
    let uniform = module.global_variables.iter().find(|(_, v)| v.space == naga::AddressSpace::Uniform)?.1;
    let naga::TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else { return None };
    let fields = members
        .iter()
        .map(|m| {
            let (scalar, count) = match &module.types[m.ty].inner {
                naga::TypeInner::Scalar(s) => (scalar_name(*s), 1),
                naga::TypeInner::Vector { size, scalar } => (scalar_name(*scalar), *size as u32),
                naga::TypeInner::Array { base, size: naga::ArraySize::Constant(n), .. } => match &module.types[*base].inner {
                    naga::TypeInner::Scalar(s) => (scalar_name(*s), n.get()),
                    other => (format!("array of {other:?}"), n.get()),
                },
                other => (format!("{other:?}"), 0),
            };
            Field { name: m.name.clone().unwrap_or_default(), scalar, count, offset: m.offset }
        })
        .collect();
    Some((fields, *span))
}

#[test]
fn every_kernel_reads_the_parameters_its_launcher_uploads() {
    let mut checked = std::collections::BTreeSet::new();
    let mut mismatches = Vec::new();
    for key in all_variants() {
        let source = key.source().unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{}: {}", key.shader, e.emit_to_string(&source)));
        let Some(wgsl) = wgsl_struct(&module) else { continue };
        let Some(&(_, file, name)) = PARAMS.iter().find(|(shader, ..)| *shader == key.shader) else {
            mismatches.push(format!("{} has a uniform block but no row in tests/kernel_params.rs", key.shader));
            continue;
        };
        let rust = rust_struct(file, name);
        // One report per shader: its variants share the struct.
        if rust != wgsl && !mismatches.iter().any(|m| m.starts_with(key.shader)) {
            mismatches.push(format!(
                "{} {:?} and {file}'s {name} differ:\n  WGSL {} bytes: {:?}\n  Rust {} bytes: {:?}",
                key.shader, key.defines, wgsl.1, wgsl.0, rust.1, rust.0
            ));
        }
        checked.insert(key.shader);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let listed: std::collections::BTreeSet<&str> = PARAMS.iter().map(|row| row.0).collect();
    assert_eq!(checked, listed, "shaders checked vs listed");
}
