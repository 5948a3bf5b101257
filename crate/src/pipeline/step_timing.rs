//! What a denoising step costs, split into the CPU's share (recording its launches, then
//! encoding and submitting them) and the wait for the GPU, with the runtime's counters per
//! step and, where the adapter has timestamp queries, the GPU time of each kernel over one
//! more step. `webdiffusion bench step` prints it natively, `Engine.benchSteps` in a browser.

use serde::Serialize;
use web_time::Instant;

use super::{Request, StableDiffusion};
use crate::error::Result;
use crate::gpu::{Counters, KernelTime};

#[derive(Debug, Clone, Serialize)]
pub struct StepTimings {
    pub adapter: String,
    pub width: usize,
    pub height: usize,
    /// Each step runs the UNet over a classifier-free guidance batch of 2.
    pub guided: bool,
    pub scheduler: String,
    /// The first step: it also compiles the pipelines and fills the buffer pool.
    pub warmup_seconds: f64,
    /// Pipelines the warm-up step compiled (a first step compiles what it uses).
    pub warmup_pipelines: u64,
    /// Per timed step: from recording its first launch until the GPU has finished it.
    pub wall_seconds: Vec<f64>,
    /// Per timed step: the CPU recording its launches.
    pub record_seconds: Vec<f64>,
    /// Per timed step: the CPU encoding the recorded launches and submitting them.
    pub submit_seconds: Vec<f64>,
    /// What the runtime did during the last timed step.
    #[serde(serialize_with = "serialize_counters")]
    pub counters: Counters,
    /// The GPU time of each kernel over one more step, longest first; `None` without
    /// profiling or without timestamp queries.
    pub kernels: Option<Vec<KernelTime>>,
}

fn serialize_counters<S: serde::Serializer>(c: &Counters, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut out = s.serialize_struct("Counters", 5)?;
    out.serialize_field("launches", &c.launches)?;
    out.serialize_field("pipelines", &c.pipelines)?;
    out.serialize_field("bind_groups", &c.bind_groups)?;
    out.serialize_field("buffers", &c.buffers)?;
    out.serialize_field("submits", &c.submits)?;
    out.end()
}

/// Median, minimum and maximum.
pub fn median_min_max(values: &[f64]) -> [f64; 3] {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => [f64::NAN; 3],
        n => [v[n / 2], v[0], v[n - 1]],
    }
}

impl StableDiffusion {
    /// Runs `request` (its `steps` are ignored) for one warm-up step and `steps` timed ones,
    /// each waited for, then with `profile` one more under the launch profiler.
    pub async fn time_steps(&self, request: &Request, steps: usize, profile: bool) -> Result<StepTimings> {
        let gpu = &self.gpu;
        let steps = steps.max(1);
        let request = Request { steps: steps + 2, ..request.clone() };
        let mut denoising = self.start_generation(&request)?;
        gpu.finish().await?;
        let (start, before) = (Instant::now(), gpu.counters());
        denoising.step()?;
        gpu.finish().await?;
        let warmup_seconds = start.elapsed().as_secs_f64();
        let warmup_pipelines = (gpu.counters() - before).pipelines;

        let (mut wall_seconds, mut record_seconds, mut submit_seconds) = (Vec::new(), Vec::new(), Vec::new());
        let mut counters = Counters::default();
        for _ in 0..steps {
            let before = gpu.counters();
            let start = Instant::now();
            denoising.step()?;
            let recorded = Instant::now();
            gpu.flush()?;
            let submitted = Instant::now();
            gpu.finish().await?;
            wall_seconds.push(start.elapsed().as_secs_f64());
            record_seconds.push((recorded - start).as_secs_f64());
            submit_seconds.push((submitted - recorded).as_secs_f64());
            counters = gpu.counters() - before;
        }
        let kernels = if profile && gpu.can_profile() {
            gpu.start_profile()?;
            denoising.step()?;
            Some(gpu.take_profile().await?)
        } else {
            None
        };
        let (width, height) = denoising.size();
        Ok(StepTimings {
            adapter: format!("{} ({})", gpu.info().adapter, gpu.info().backend),
            width,
            height,
            guided: denoising.guided(),
            scheduler: denoising.scheduler_name().to_string(),
            warmup_seconds,
            warmup_pipelines,
            wall_seconds,
            record_seconds,
            submit_seconds,
            counters,
            kernels,
        })
    }
}

impl StepTimings {
    /// The numbers as Markdown tables.
    pub fn table(&self) -> String {
        let ms = |values: &[f64]| {
            let [median, min, max] = median_min_max(values);
            format!("{:.1} | {:.1} | {:.1}", median * 1e3, min * 1e3, max * 1e3)
        };
        let c = &self.counters;
        let mut out = format!(
            "adapter: {}\n{}x{}, {}, sampler {}; {} steps timed after a warm-up step of {:.0} ms that compiled {} pipelines\n\n",
            self.adapter,
            self.width,
            self.height,
            if self.guided { "CFG batch 2" } else { "batch 1" },
            self.scheduler,
            self.wall_seconds.len(),
            self.warmup_seconds * 1e3,
            self.warmup_pipelines
        );
        out += "| per step | median ms | min | max |\n|---|---:|---:|---:|\n";
        out += &format!("| wall (record, submit, wait for the GPU) | {} |\n", ms(&self.wall_seconds));
        out += &format!("| CPU: record the launches | {} |\n", ms(&self.record_seconds));
        out += &format!("| CPU: encode and submit | {} |\n\n", ms(&self.submit_seconds));
        out += "| per step | count |\n|---|---:|\n";
        for (what, n) in [
            ("launches", c.launches),
            ("bind groups created", c.bind_groups),
            ("pipelines compiled", c.pipelines),
            ("storage buffers created", c.buffers),
            ("submits", c.submits),
        ] {
            out += &format!("| {what} | {n} |\n");
        }
        if let Some(kernels) = &self.kernels {
            let total: f64 = kernels.iter().map(|k| k.seconds).sum();
            out += "\nGPU time of one step by kernel (timestamp queries, each launch in a pass of its own):\n\n";
            out += "| kernel | launches | ms | share |\n|---|---:|---:|---:|\n";
            for k in kernels {
                out += &format!("| {} | {} | {:.2} | {:.1}% |\n", k.kernel, k.launches, k.seconds * 1e3, 100.0 * k.seconds / total);
            }
            out += &format!("| total | {} | {:.2} | |\n", kernels.iter().map(|k| k.launches).sum::<u64>(), total * 1e3);
        }
        out
    }
}
