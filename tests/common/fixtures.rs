//! Reading the diffusers fixtures in tests/fixtures (written by tests/fixtures/generate.py).

use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// `tests/fixtures/<relative>`.
pub fn path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(relative)
}

/// The reference outputs of one fixture model (`outputs/<model>.safetensors`).
pub struct Outputs {
    bytes: Vec<u8>,
}

impl Outputs {
    pub fn load(model: &str) -> Self {
        let file = path(&format!("outputs/{model}.safetensors"));
        Self { bytes: std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())) }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture safetensors")
    }

    /// An f32 tensor's values and shape.
    pub fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        (bytemuck::pod_collect_to_vec(view.data()), view.shape().to_vec())
    }

    /// An f64 tensor's values (scheduler timesteps and sigmas).
    pub fn f64(&self, name: &str) -> Vec<f64> {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(view.dtype(), Dtype::F64, "{name}");
        bytemuck::pod_collect_to_vec(view.data())
    }

    /// An i64 tensor's values (token ids, timesteps).
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(view.dtype(), Dtype::I64, "{name}");
        bytemuck::pod_collect_to_vec(view.data())
    }

    pub fn metadata(&self, key: &str) -> Option<String> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).ok()?;
        metadata.metadata().as_ref()?.get(key).cloned()
    }
}

/// One case of `outputs/schedulers.safetensors` (see tests/fixtures/README.md).
pub struct SchedulerCase {
    pub name: String,
    pub sampler: String,
    pub config: webdiffusion::schedulers::SchedulerConfig,
    pub steps: usize,
    /// The seed of the generator the sampler's step noise comes from.
    pub seed_c: u64,
    pub init_noise_sigma: f32,
}

/// The scheduler fixture cases of `samplers`, sorted by name.
pub fn scheduler_cases(outputs: &Outputs, samplers: &[&str]) -> Vec<SchedulerCase> {
    let cases: serde_json::Value = serde_json::from_str(&outputs.metadata("cases").expect("cases metadata")).unwrap();
    let mut chosen: Vec<SchedulerCase> = cases
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, case)| samplers.contains(&case["sampler"].as_str().unwrap()))
        .map(|(name, case)| SchedulerCase {
            name: name.clone(),
            sampler: case["sampler"].as_str().unwrap().to_string(),
            // The config diffusers saved, `_use_default_values` included: keys it lists
            // take our class defaults, as they took diffusers'.
            config: webdiffusion::schedulers::SchedulerConfig::from_json(&case["config"].to_string(), name).unwrap(),
            steps: case["steps"].as_u64().unwrap() as usize,
            seed_c: case["seed_c"].as_u64().unwrap(),
            init_noise_sigma: case["init_noise_sigma"].as_f64().unwrap() as f32,
        })
        .collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    chosen
}
