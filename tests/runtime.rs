//! The runtime itself: buffer reuse, batching, limits and a lost device.

use crate::common;

use common::{gpu, read};
use webdiffusion::Error;
use webdiffusion::gpu::{Access, DType, Gpu, Launch};
use webdiffusion::kernels::elementwise as ew;

#[test]
fn freed_buffers_are_reused() {
    // Its own device: other tests in this binary allocate concurrently.
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let a = gpu.empty(&[1000], DType::F32).unwrap();
    assert_eq!(gpu.pooled_bytes(), 0);
    drop(a);
    let held = gpu.pooled_bytes();
    assert!(held >= 4000, "a freed tensor returns to the pool, held {held}");
    let _b = gpu.empty(&[990], DType::F32).unwrap(); // same size class
    assert_eq!(gpu.pooled_bytes(), 0, "the pooled buffer was taken again");
    let _c = gpu.empty(&[4000], DType::F32).unwrap(); // another class: a new buffer
    assert_eq!(gpu.pooled_bytes(), 0);
}

#[test]
fn a_chain_of_launches_runs_in_one_batch_with_reuse() {
    let gpu = gpu();
    let x = gpu.upload_f32(&[3, 100], &vec![1.0; 300]).unwrap();
    let mut y = x.clone();
    // 50 dependent launches recorded before any submit: each frees the previous
    // intermediate, which the next output reuses inside the same pass.
    for _ in 0..50 {
        y = ew::axpby(gpu, 1.0, &y, 1.0, &x, None).unwrap();
    }
    assert_eq!(read(&y), vec![51.0; 300]);
}

#[test]
fn repeated_launches_reuse_their_bind_groups_with_fresh_parameters() {
    // Its own device, so the counters see only these launches.
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let x = gpu.upload_f32(&[64], &(0..64).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
    let y = gpu.upload_f32(&[64], &vec![1.0; 64]).unwrap();
    // A step's launches on the same buffers, flushed by a readback, with new scalars each time.
    let step = |a: f32, b: f32| {
        let before = gpu.counters();
        let out = ew::axpby(&gpu, a, &x, b, &y, None).unwrap();
        let values = read(&out);
        (values, (gpu.counters() - before).bind_groups)
    };
    let (first, created) = step(2.0, 3.0);
    assert_eq!(first, (0..64).map(|i| 2.0 * i as f32 + 3.0).collect::<Vec<_>>());
    assert_eq!(created, 1);
    let (second, created) = step(-1.0, 0.5);
    assert_eq!(second, (0..64).map(|i| 0.5 - i as f32).collect::<Vec<_>>(), "the cached group reads this flush's scalars");
    assert_eq!(created, 0, "the same kernel on the same buffers binds the group made before");
    // Emptying the pool lets the cached groups (and their hold on buffers) go.
    gpu.trim_pool();
    let (third, created) = step(1.0, 1.0);
    assert_eq!(third, (0..64).map(|i| i as f32 + 1.0).collect::<Vec<_>>());
    assert_eq!(created, 1);
}

#[test]
fn bad_shapes_are_errors() {
    let gpu = gpu();
    assert!(matches!(gpu.upload_f32(&[2, 3], &[1.0; 5]), Err(Error::Shape { .. })));
    let t = gpu.upload_f32(&[2, 3], &[1.0; 6]).unwrap();
    assert!(matches!(t.reshape(&[4]), Err(Error::Shape { .. })));
    assert_eq!(t.reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
}

#[test]
fn oversized_tensor_is_a_clear_error() {
    let gpu = gpu();
    let limit = gpu.info().max_buffer_size;
    let err = gpu.empty(&[(limit / 4 + 1) as usize], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("at most"), "{err}");
}

#[test]
fn info_reports_real_limits() {
    let info = gpu().info();
    assert!(!info.adapter.is_empty());
    assert!(info.max_storage_binding >= 128 << 20, "{info}");
    assert!(info.max_workgroups_per_dim >= 65535);
}

#[test]
fn lost_device_is_an_error_not_a_panic() {
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let x = gpu.upload_f32(&[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    gpu.destroy();
    assert!(matches!(ew::scale(&gpu, &x, 2.0), Err(Error::DeviceLost(_))));
    assert!(matches!(pollster::block_on(x.to_vec()), Err(Error::DeviceLost(_))));
    assert!(matches!(gpu.upload_f32(&[1], &[0.0]), Err(Error::DeviceLost(_))));
}

#[test]
fn a_pipeline_the_device_rejects_is_an_error() {
    // Its own device: the failure is sticky for the context it happened on.
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let x = gpu.upload_f32(&[4], &[1.0; 4]).unwrap();
    // The unary kernel writes binding 2; a layout without it cannot make a pipeline.
    let result = gpu.launch(Launch {
        shader: "elementwise.wgsl",
        entry: "unary",
        defines: vec![("UNARY", String::new()), ("OP", "silu".into())],
        params: &[0u8; 64],
        bindings: &[(&x, Access::Read)],
        workgroups: [1, 1, 1],
    });
    assert!(matches!(result, Err(Error::Gpu(_))), "{result:?}");
}

#[test]
fn index_tensors_are_refused_where_floats_are_read() {
    let gpu = gpu();
    let ids = gpu.upload_u32(&[2, 3], &[0, 1, 2, 49405, 49406, 49407]).unwrap();
    assert_eq!(read(&ids), vec![0.0, 1.0, 2.0, 49405.0, 49406.0, 49407.0]);
    assert!(matches!(ew::unary(gpu, &ids, ew::Unary::Silu), Err(Error::Shape { .. })));
    let x = gpu.upload_f32(&[3, 3], &[1.0; 9]).unwrap();
    let result = webdiffusion::kernels::matmul::matmul(gpu, &x, &ids.reshape(&[3, 2]).unwrap(), &Default::default());
    assert!(matches!(result, Err(Error::Shape { .. })), "{result:?}");
}
