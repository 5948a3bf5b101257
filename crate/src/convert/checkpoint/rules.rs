//! The key mapping as data: for one component, every checkpoint tensor name the
//! inferred layout has, and what it becomes in diffusers. Applying the rules is strict
//! both ways: a tensor under the component's root that no rule names is an unknown
//! key, a rule whose tensor the file lacks is a missing tensor.

use std::collections::{BTreeMap, BTreeSet};

use super::file::{CheckpointFile, Tensors};
use crate::convert::HostTensor;
use crate::error::{Error, Result};

/// What one checkpoint tensor becomes.
enum Target {
    /// The same values under the diffusers name.
    Tensor(String),
    /// A 1x1 convolution weight `[out, in, 1, 1]` that diffusers holds as a linear weight `[out, in]`.
    ConvToLinear(String),
    /// A fused projection split into equal row blocks (OpenCLIP's `in_proj` into q, k, v).
    SplitRows(Vec<String>),
    /// Part of the checkpoint that the diffusers model does not have (SD 2.x's last text layer).
    Drop,
}

/// Which parameters a layer has.
#[derive(Clone, Copy)]
pub(super) enum Params {
    WeightBias,
    Weight,
}

impl Params {
    fn names(self) -> &'static [&'static str] {
        match self {
            Params::WeightBias => &["weight", "bias"],
            Params::Weight => &["weight"],
        }
    }
}

/// A layer in a module table: checkpoint stem, diffusers stem, parameters.
pub(super) type Layer = (&'static str, &'static str, Params);

pub(super) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

pub(super) struct Rules {
    /// The component's prefix in the checkpoint (`model.diffusion_model.`).
    root: String,
    /// What the rules describe, for error messages ("in the UNet").
    context: &'static str,
    rules: BTreeMap<String, Target>,
    /// Names under the root that may be present and are not weights (buffers, extras).
    ignored: BTreeSet<String>,
}

impl Rules {
    pub fn new(root: &str, context: &'static str) -> Self {
        Self { root: root.to_string(), context, rules: BTreeMap::new(), ignored: BTreeSet::new() }
    }

    /// One layer: `{ldm}.weight` (and `.bias`) become `{diffusers}.weight` (and `.bias`).
    pub fn layer(&mut self, ldm: &str, diffusers: &str, params: Params) {
        for param in params.names() {
            self.rules.insert(join(ldm, param), Target::Tensor(join(diffusers, param)));
        }
    }

    /// Every layer of `table`, under the module prefixes `ldm` and `diffusers`.
    pub fn table(&mut self, ldm: &str, diffusers: &str, table: &[Layer]) {
        for &(ldm_stem, diffusers_stem, params) in table {
            self.layer(&join(ldm, ldm_stem), &join(diffusers, diffusers_stem), params);
        }
    }

    /// A layer whose weight is a 1x1 convolution in the checkpoint and linear in diffusers.
    pub fn conv_to_linear(&mut self, ldm: &str, diffusers: &str) {
        self.rules.insert(join(ldm, "weight"), Target::ConvToLinear(join(diffusers, "weight")));
        self.rules.insert(join(ldm, "bias"), Target::Tensor(join(diffusers, "bias")));
    }

    /// A single tensor renamed.
    pub fn tensor(&mut self, ldm: &str, diffusers: &str) {
        self.rules.insert(ldm.to_string(), Target::Tensor(diffusers.to_string()));
    }

    /// A fused tensor whose row blocks become `parts`, in order.
    pub fn split_rows(&mut self, ldm: &str, parts: Vec<String>) {
        self.rules.insert(ldm.to_string(), Target::SplitRows(parts));
    }

    /// A tensor the file must have and the diffusers model does not use.
    pub fn drop(&mut self, ldm: &str) {
        self.rules.insert(ldm.to_string(), Target::Drop);
    }

    /// Every layer of `table` under `ldm`, required and dropped.
    pub fn drop_table(&mut self, ldm: &str, table: &[Layer]) {
        for &(stem, _, params) in table {
            for param in params.names() {
                self.drop(&join(&join(ldm, stem), param));
            }
        }
    }

    /// A tensor that may be present and is not a weight.
    pub fn ignore(&mut self, ldm: &str) {
        self.ignored.insert(ldm.to_string());
    }

    /// The component's tensors under their diffusers names.
    pub fn apply(&self, file: &CheckpointFile) -> Result<Tensors> {
        let unknown: Vec<&str> = file
            .names_under(&self.root)
            .filter(|name| {
                let local = &name[self.root.len()..];
                !self.rules.contains_key(local) && !self.ignored.contains(local)
            })
            .collect();
        file.refuse_unknown(&unknown, self.context)?;
        let mut out = Tensors::new();
        for (local, target) in &self.rules {
            let name = format!("{}{local}", self.root);
            if !file.contains(&name) {
                return Err(file.missing(&name));
            }
            match target {
                Target::Tensor(to) => {
                    out.insert(to.clone(), file.values(&name)?);
                }
                Target::ConvToLinear(to) => {
                    let mut tensor = file.values(&name)?;
                    tensor.shape = linear_shape(file, &name, &tensor.shape)?;
                    out.insert(to.clone(), tensor);
                }
                Target::SplitRows(parts) => {
                    for (part, tensor) in parts.iter().zip(split_rows(file, &name, file.values(&name)?, parts.len())?) {
                        out.insert(part.clone(), tensor);
                    }
                }
                Target::Drop => {}
            }
        }
        Ok(out)
    }
}

/// `[out, in, 1, 1]` (or already `[out, in]`) as `[out, in]`.
fn linear_shape(file: &CheckpointFile, name: &str, shape: &[usize]) -> Result<Vec<usize>> {
    match shape {
        [out, inp, 1, 1] | [out, inp] => Ok(vec![*out, *inp]),
        _ => Err(Error::WeightShape {
            file: file.file().to_string(),
            name: name.to_string(),
            expected: vec![shape.first().copied().unwrap_or(0), shape.get(1).copied().unwrap_or(0), 1, 1],
            found: shape.to_vec(),
        }),
    }
}

fn split_rows(file: &CheckpointFile, name: &str, tensor: HostTensor, parts: usize) -> Result<Vec<HostTensor>> {
    let rows = tensor.shape.first().copied().unwrap_or(0);
    if rows == 0 || !rows.is_multiple_of(parts) {
        return Err(file.format(format!("tensor {name} of shape {:?} does not split into {parts} equal row blocks", tensor.shape)));
    }
    Ok(tensor.row_blocks(parts))
}
