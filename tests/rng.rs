//! Seeded noise against torch's own `randn` (fixtures written by torch 2.15 on the CPU).

use crate::common;

use common::assert_close;
use common::fixtures::Outputs;
use webdiffusion::rng::TorchGenerator;

const SEEDS: [u64; 4] = [0, 42, 1400, 123456789];

#[test]
fn randn_matches_torch_for_every_size() {
    let outputs = Outputs::load("rng");
    for seed in SEEDS {
        for n in [1, 2, 3, 15, 16, 17, 31, 64, 256, 1000] {
            let (want, _) = outputs.f32(&format!("randn.s{seed}.n{n}"));
            // torch uses vectorised log/sin/cos (Sleef, 1 ulp); values are O(1).
            assert_close(&format!("seed {seed} n {n}"), &TorchGenerator::new(seed).randn(n), &want, 2e-6, 2e-6);
        }
    }
}

#[test]
fn successive_draws_continue_the_stream() {
    let outputs = Outputs::load("rng");
    for seed in SEEDS {
        for (first, second) in [(17, 5), (3, 40)] {
            let mut g = TorchGenerator::new(seed);
            let mut got = g.randn(first);
            got.extend(g.randn(second));
            let (want, _) = outputs.f32(&format!("randn.s{seed}.n{first}.then.n{second}"));
            assert_close(&format!("seed {seed}: {first} then {second}"), &got, &want, 2e-6, 2e-6);
        }
    }
}

#[test]
fn pipeline_initial_latents_are_reproduced() {
    for (model, seed) in [("sd1-tiny", 1400), ("sd2-tiny", 2400), ("lcm-tiny", 3400)] {
        let (want, shape) = Outputs::load(model).f32("pipeline.init_latents");
        let got = TorchGenerator::new(seed).randn(shape.iter().product());
        assert_close(model, &got, &want, 2e-6, 2e-6);
    }
}
