//! Tensors larger than one storage binding: zero-copy views, activations held in channel
//! chunks (the VAE's way past WebGPU's 128 MiB binding limit) checked against the
//! unsplit computation on the same device, and real tensors over the limit on this
//! device: a 136 MB activation and a CLIP-L-sized 152 MB f32 embedding table.

use crate::common;

use std::time::Instant;

use common::{assert_close, gpu, random, read};
use webdiffusion::Error;
use webdiffusion::gpu::{DType, Gpu, Tensor};
use webdiffusion::kernels::channel_chunks::ChannelChunks;
use webdiffusion::kernels::conv2d::{Conv2dOptions, ConvPart, conv2d, conv2d_into};
use webdiffusion::kernels::gather::gather_rows;
use webdiffusion::kernels::{elementwise as ew, layout, norm};
use webdiffusion::reference::gather as cpu_gather;

fn alignment() -> usize {
    gpu().info().storage_offset_alignment.max(4) as usize
}

fn upload(shape: &[usize], seed: u64) -> (Vec<f32>, Tensor) {
    let values = random(shape.iter().product(), seed, 2.0);
    let tensor = gpu().upload_f32(shape, &values).unwrap();
    (values, tensor)
}

fn is_shape_error(result: Result<impl std::fmt::Debug, Error>, what: &str) {
    match result {
        Err(Error::Shape { detail, .. }) => assert!(detail.contains(what), "{detail}"),
        other => panic!("{what}: {other:?}"),
    }
}

// ---------------------------------------------------------------------- views

#[test]
fn views_read_aligned_ranges_of_the_same_storage() {
    // One channel plane is a multiple of every storage alignment (at most 256 bytes).
    let (values, x) = upload(&[1, 6, 8, 8], 1);
    let plane = 64;
    let view = x.view_narrow(1, 2, 3).unwrap();
    assert_eq!((view.shape(), view.byte_offset()), (&[1, 3, 8, 8][..], 2 * 256));
    assert_eq!(read(&view), values[2 * plane..5 * plane]);
    // A view of a view adds up; reshaping keeps the offset; the whole range is the tensor.
    let inner = view.view_narrow(1, 1, 2).unwrap().reshape(&[2, 64]).unwrap();
    assert_eq!(inner.byte_offset(), 3 * 256);
    assert_eq!(read(&inner), values[3 * plane..5 * plane]);
    assert_eq!(x.view_narrow(1, 0, 6).unwrap().byte_offset(), 0);
    // Kernels read through views: the bindings start at the offset.
    let doubled = ew::scale(gpu(), &view, 2.0).unwrap();
    assert_eq!(read(&doubled), values[2 * plane..5 * plane].iter().map(|v| 2.0 * v).collect::<Vec<_>>());

    // Packed f16: a view starts on a word, whatever the alignment.
    let halves = gpu().upload_f32_as_f16(&[3 * alignment()], &values[..3 * alignment()]).unwrap();
    let start = alignment() / 2; // elements: `alignment` bytes in
    let want: Vec<f32> = values[start..start + 7].iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let view = halves.view_narrow(0, start, 7).unwrap();
    assert_eq!(read(&view), want);
    assert_eq!(read(&ew::unary(gpu(), &view, ew::Unary::Identity).unwrap()), want);
}

#[test]
fn views_that_cannot_be_bound_are_errors() {
    let (_, x) = upload(&[2, 6, 8, 8], 2);
    is_shape_error(x.view_narrow(1, 1, 2), "not contiguous");
    is_shape_error(x.view_narrow(3, 0, 9), "out of range");
    is_shape_error(x.view_narrow(4, 0, 1), "axis 4");
    let flat = x.reshape(&[768]).unwrap();
    if alignment() > 4 {
        is_shape_error(flat.view_narrow(0, 1, 4), "alignment");
    }
    let halves = gpu().upload_f32_as_f16(&[16], &[1.0; 16]).unwrap();
    is_shape_error(halves.view_narrow(0, 1, 4), "alignment"); // half a word in
    // Batch 1 is contiguous; the same slice of batch 2 is not, and layout::narrow copies it.
    assert!(x.view_narrow(0, 1, 1).unwrap().view_narrow(1, 1, 2).is_ok());
    assert_eq!(layout::narrow(gpu(), &x, 1, 1, 2).unwrap().shape(), [2, 2, 8, 8]);
}

#[test]
fn kernels_write_through_views_and_may_not_alias_them() {
    let gpu = gpu();
    let (_, x_gpu) = upload(&[1, 4, 8, 8], 3);
    let (_, w_gpu) = upload(&[6, 4, 3, 3], 4);
    let opts = Conv2dOptions::new(1, 1);
    let whole = read(&conv2d(gpu, &x_gpu, &w_gpu, &opts).unwrap());
    // Output channels 2..6 written into a view of a larger tensor; the rest untouched.
    let out = gpu.upload_f32(&[1, 6, 8, 8], &[7.0; 384]).unwrap();
    let part = ConvPart { out_start: 2, ..Default::default() };
    conv2d_into(gpu, &x_gpu, &w_gpu, &opts, part, &out.view_narrow(1, 2, 4).unwrap()).unwrap();
    let got = read(&out);
    assert_eq!(got[..128], [7.0; 128]);
    assert_eq!(got[128..], whole[128..]);
    // A launch writing a view may not bind the same storage again.
    let err = conv2d_into(gpu, &out.view_narrow(1, 0, 4).unwrap(), &w_gpu, &opts, part, &out.view_narrow(1, 2, 4).unwrap());
    is_shape_error(err, "same storage");
}

#[test]
fn a_view_keeps_its_storage_out_of_the_pool() {
    // Its own device: other tests in this binary allocate concurrently.
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let values: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    let x = gpu.upload_f32(&[1, 4, 32, 32], &values).unwrap();
    let view = x.view_narrow(1, 3, 1).unwrap();
    drop(x);
    assert_eq!(gpu.pooled_bytes(), 0, "the view holds the buffer");
    // Allocations of the same size class meanwhile get other buffers.
    let other = gpu.upload_f32(&[1, 4, 32, 32], &[0.0; 4096]).unwrap();
    assert_eq!(pollster::block_on(view.to_vec()).unwrap(), values[3072..]);
    drop(view);
    assert!(gpu.pooled_bytes() >= 16384, "the last handle returned it");
    let reused = gpu.upload_f32(&[1, 4, 32, 32], &[5.0; 4096]).unwrap();
    assert_eq!(gpu.pooled_bytes(), 0, "and it was taken again");
    assert_eq!(pollster::block_on(reused.view_narrow(1, 2, 1).unwrap().to_vec()).unwrap(), [5.0; 1024]);
    drop(other);
}

// ----------------------------------------------- channel chunks against whole tensors

/// Splits `x` in chunks of `split` channels and checks each operation against the whole
/// tensor. Only a conv over several input chunks changes the arithmetic (its partial
/// sums are added in another order); everything else is bit-identical.
fn chunked_ops_match_whole(shape: [usize; 4], split: usize, out_split: usize, weights: DType) {
    let gpu = gpu();
    let what = format!("{shape:?} in chunks of {split}, output chunks of {out_split}, {weights:?} weights");
    let (_, x) = upload(&shape, 10);
    let chunks = ChannelChunks::split(&x, split).unwrap();
    assert_eq!(chunks.ranges().count(), shape[1].div_ceil(split), "{what}");
    assert_eq!(chunks.to_vec_blocking(), read(&x), "{what}: split");

    let channels = shape[1];
    let param = |shape: &[usize], seed, scale| {
        let values = random(shape.iter().product(), seed, scale);
        match weights {
            DType::F16 => gpu.upload_f32_as_f16(shape, &values).unwrap(),
            _ => gpu.upload_f32(shape, &values).unwrap(),
        }
    };
    let (gamma, beta) = (param(&[channels], 11, 1.0), param(&[channels], 12, 0.5));
    let groups = channels / 4;
    let normed = chunks.group_norm(groups, &gamma, &beta, 1e-6, true).unwrap();
    let whole_norm = norm::group_norm(gpu, &x, groups, &gamma, &beta, 1e-6, true).unwrap();
    assert_eq!(normed.to_vec_blocking(), read(&whole_norm), "{what}: group norm");

    let out_channels = 13;
    let w = param(&[out_channels, channels, 3, 3], 13, 0.5);
    let bias = param(&[out_channels], 14, 1.0);
    let opts = Conv2dOptions::new(1, 1).with_bias(&bias);
    let conv = chunks.conv2d(&w, &opts, None, out_split).unwrap();
    assert_eq!(conv.ranges().count(), out_channels.div_ceil(out_split), "{what}");
    let (got, want) = (conv.to_vec_blocking(), read(&conv2d(gpu, &x, &w, &opts).unwrap()));
    // A residual (chunked as the output is) and per-channel values, added once however
    // many input chunks the sum has.
    let (_, residual) = upload(&[shape[0], out_channels, shape[2], shape[3]], 15);
    let per_channel = gpu.upload_f32(&[shape[0], out_channels], &random(shape[0] * out_channels, 16, 1.0)).unwrap();
    let residual_chunks = ChannelChunks::split(&residual, out_split).unwrap();
    let adding = opts.with_channel_add(Some(&per_channel));
    let got_adding = chunks.conv2d(&w, &adding, Some(&residual_chunks), out_split).unwrap().to_vec_blocking();
    let want_adding = read(&conv2d(gpu, &x, &w, &adding.with_residual(Some(&residual))).unwrap());
    if split >= channels {
        assert_eq!(got, want, "{what}: conv by output chunks");
        assert_eq!(got_adding, want_adding, "{what}: conv adding by output chunks");
    } else {
        // 9*C products of size <= 1 summed in f32: regrouping moves the sum by a few of
        // its roundings, far below 1e-4.
        assert_close(&format!("{what}: conv"), &got, &want, 1e-4, 1e-5);
        assert_close(&format!("{what}: conv adding"), &got_adding, &want_adding, 1e-4, 1e-5);
    }

    let up = chunks.upsample_nearest_2x(out_split).unwrap();
    assert_eq!(up.to_vec_blocking(), read(&layout::upsample_nearest_2x(gpu, &x).unwrap()), "{what}: upsample");
    let sum = normed.add(&chunks).unwrap();
    assert_eq!(sum.to_vec_blocking(), read(&ew::add(gpu, &whole_norm, &x).unwrap()), "{what}: add");
    let scaled = chunks.scale(0.75).unwrap();
    assert_eq!(scaled.to_vec_blocking(), read(&ew::scale(gpu, &x, 0.75).unwrap()), "{what}: scale");
    // A range across chunks is concatenated.
    let across = chunks.channels(split - 1..(split + 2).min(channels)).unwrap();
    assert_eq!(read(&across), read(&layout::narrow(gpu, &x, 1, split - 1, across.shape()[1]).unwrap()), "{what}: channels");
}

trait ReadAll {
    fn to_vec_blocking(&self) -> Vec<f32>;
}

impl ReadAll for ChannelChunks {
    fn to_vec_blocking(&self) -> Vec<f32> {
        pollster::block_on(self.to_vec()).unwrap()
    }
}

#[test]
fn chunked_input_output_and_both_match_the_whole_tensor() {
    // Channel planes of 256 bytes: the chunks are views.
    chunked_ops_match_whole([1, 16, 8, 16], 8, 13, DType::F32);
    chunked_ops_match_whole([1, 16, 8, 16], 16, 5, DType::F32);
    chunked_ops_match_whole([1, 16, 8, 16], 4, 4, DType::F16);
    // Odd planes and a batch of 2: the chunks are copies.
    chunked_ops_match_whole([1, 24, 13, 17], 12, 6, DType::F32);
    chunked_ops_match_whole([2, 24, 9, 7], 8, 13, DType::F16);
}

#[test]
fn chunks_that_split_a_norm_group_are_refused() {
    let (_, x) = upload(&[1, 16, 4, 4], 20);
    let chunks = ChannelChunks::split(&x, 6).unwrap();
    let one = gpu().upload_f32(&[16], &[1.0; 16]).unwrap();
    is_shape_error(chunks.group_norm(4, &one, &one, 1e-6, false), "whole groups");
    is_shape_error(chunks.group_norm(5, &one, &one, 1e-6, false), "5 groups");
    is_shape_error(ChannelChunks::split(&x, 0), "at least one channel");
}

// --------------------------------------------------------- real tensors over the limit

/// f32 bytes over the binding limit: [1, 256, 512, 260] is 136 MB, past lavapipe's and
/// WebGPU's 128 MiB, held as two 128-channel views (68 MB each).
#[test]
fn an_activation_over_the_binding_limit_runs_in_channel_chunks() {
    let gpu = gpu();
    let started = Instant::now();
    let [channels, h, w] = [256, 512, 260];
    let plane = h * w;
    let shape = [1, channels, h, w];
    let (x, x_gpu) = upload(&shape, 30);
    assert!(x_gpu.byte_len() > gpu.info().max_storage_binding, "{} bytes", x_gpu.byte_len());
    let (w_values, weight) = upload(&[8, channels, 1, 1], 31);
    let bias_values = random(8, 32, 1.0);
    let bias = gpu.upload_f32(&[8], &bias_values).unwrap();
    let opts = Conv2dOptions::new(1, 0).with_bias(&bias);
    assert!(matches!(conv2d(gpu, &x_gpu, &weight, &opts), Err(Error::TooLarge { .. })), "binding it whole is refused");

    let chunks = ChannelChunks::split(&x_gpu, 128).unwrap();
    let offsets: Vec<u64> = chunks.chunks().map(|(_, t)| t.byte_offset()).collect();
    assert_eq!(offsets, [0, 128 * plane as u64 * 4], "two views of the one buffer");
    let out = read(chunks.conv2d(&weight, &opts, None, 8).unwrap().as_whole().unwrap());
    for pixel in (0..plane).step_by(4099) {
        for oc in 0..8 {
            let terms = (0..channels).map(|c| w_values[oc * channels + c] as f64 * x[c * plane + pixel] as f64);
            let want = bias_values[oc] as f64 + terms.clone().sum::<f64>();
            let magnitude = bias_values[oc].abs() as f64 + terms.map(f64::abs).sum::<f64>();
            let got = out[oc * plane + pixel] as f64;
            // 257 terms summed in f32 err by at most 257 * 2^-24 of their magnitude.
            assert!((got - want).abs() <= 2e-5 * magnitude, "channel {oc} pixel {pixel}: {got} vs {want}");
        }
    }

    // Group norm in 32 groups of 8 channels: the first and last groups, one per chunk.
    let ones = gpu.upload_f32(&[channels], &vec![1.0; channels]).unwrap();
    let zeros = gpu.upload_f32(&[channels], &vec![0.0; channels]).unwrap();
    let normed = chunks.group_norm(32, &ones, &zeros, 1e-6, false).unwrap();
    for group in [0, 31] {
        let range = group * 8 * plane..(group + 1) * 8 * plane;
        let values = &x[range];
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / values.len() as f64;
        let got = read(&normed.channels(group * 8..group * 8 + 8).unwrap());
        let want: Vec<f32> = values.iter().map(|&v| ((v as f64 - mean) / (var + 1e-6).sqrt()) as f32).collect();
        // Values within ~1.7 standard deviations; f32 statistics over a million values.
        assert_close(&format!("group {group}"), &got, &want, 1e-5, 1e-5);
    }
    eprintln!("136 MB activation: {:.1} s", started.elapsed().as_secs_f64());
}

/// CLIP-L's token embedding table in f32, 49408 x 768 (152 MB), read in two row chunks.
#[test]
fn an_embedding_table_over_the_binding_limit_is_gathered_in_row_chunks() {
    let gpu = gpu();
    let started = Instant::now();
    let (rows, dim) = (49408, 768);
    let table = random(rows * dim, 40, 1.0);
    let table_gpu = gpu.upload_f32(&[rows, dim], &table).unwrap();
    assert!(table_gpu.byte_len() > gpu.info().max_storage_binding);
    // The first, the last, and ids on both sides of the chunk boundary (43690 rows of
    // 3072 bytes fit 128 MiB).
    let ids: Vec<u32> = [49406, 0, 43689, 43690, 43691, 49407, 320, 49407, 1].into_iter().chain((0..68).map(|i| i * 727)).collect();
    let ids_gpu = gpu.upload_u32(&[1, 77], &ids).unwrap();
    let got = read(&gather_rows(gpu, &table_gpu, &ids_gpu).unwrap());
    assert_eq!(got, cpu_gather::gather_rows(&table, dim, &ids));
    eprintln!("152 MB table: {:.1} s", started.elapsed().as_secs_f64());
}
