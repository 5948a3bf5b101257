//! `webdiffusion-eval`: how often the built-in model draws what the prompt asks. Every
//! prompt of the fixed list (`models/eval/prompts.json`: one object of a named colour, shape,
//! size and position, on seen and on held-out combinations) is generated through the
//! engine and read back by a deterministic analyser; accuracies are printed per group.
//! Its own binary: drawing and reading shapes is this evaluation's business, not the CLI's.

mod analyse;
mod mask;
mod score;
mod shape;
mod sheet;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use webdiffusion::gpu::Gpu;
use webdiffusion::image::{RgbImage, decode_png, encode_png};
use webdiffusion::{Error, Result};
use webdiffusion_cli::prompts::{PromptList, format_error};
use webdiffusion_cli::sampling::SamplingArgs;
use webdiffusion_cli::{generate_image, open_model};

use shape::Shape;

#[derive(Parser)]
#[command(
    name = "webdiffusion-eval",
    version,
    about = "Generate the evaluation prompts (models/eval/prompts.json) and score colour, shape, position and size with a deterministic image analyser"
)]
struct QualityArgs {
    /// A package folder or a diffusers folder.
    #[arg(long, required_unless_present = "score_sheet")]
    model: Option<PathBuf>,
    /// Score the images of these PNGs, together, instead of generating any: tiles laid out as
    /// `models/eval/ground_truth.png` (64x64, 16 to a row, tile t showing prompt t % 64), as
    /// `models/eval/vae_ceiling.py` writes a VAE's reconstructions of the ground truth and
    /// `--sheet` writes generated images.
    #[arg(long, num_args = 1.., conflicts_with_all = ["model", "sheet"])]
    score_sheet: Vec<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Images per prompt, with seeds `--first-seed`, `--first-seed` + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The seed of each prompt's first image.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Also write every image into this PNG, seed after seed, laid out as `--score-sheet`
    /// reads: runs over other seeds can be scored together later.
    #[arg(long)]
    sheet: Option<PathBuf>,
}

fn main() -> ExitCode {
    webdiffusion_cli::init_logging();
    let args = QualityArgs::parse();
    match pollster::block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The prompt list, checked against the analyser: its shapes must be the data's, in order.
fn prompt_list() -> Result<PromptList> {
    let list = PromptList::builtin()?;
    if !list.shapes.iter().map(String::as_str).eq(Shape::ALL.iter().map(|s| s.name())) {
        return Err(format_error(format!("shapes {:?} are not the analyser's", list.shapes)));
    }
    Ok(list)
}

async fn run(args: QualityArgs) -> Result<()> {
    let list = prompt_list()?;
    let palette = list.palette();
    let Some(model) = &args.model else {
        return score_sheets(&list, &args.score_sheet);
    };
    let gpu = &Gpu::new().await?;
    let sd = open_model(gpu, model).await?;
    let total = list.prompts.len() * args.seeds as usize;
    let (mut outcomes, mut images) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let start = Instant::now();
    let seeds = args.first_seed..args.first_seed + args.seeds;
    for seed in seeds.clone() {
        for (index, prompt) in list.prompts.iter().enumerate() {
            let request = args.sampling.request(&prompt.prompt, seed);
            let image = generate_image(&sd, &request).await?;
            let analysis = analyse::analyse(&image, &palette);
            eprintln!("{}/{total} seed {seed}: {:?} -> {}", outcomes.len() + 1, prompt.prompt, score::describe(&list, analysis.as_ref()));
            outcomes.push(score::Outcome { prompt: index, analysis });
            images.push(image);
        }
    }
    let seconds = start.elapsed().as_secs_f64() / total.max(1) as f64;
    println!("adapter: {} ({})", gpu.info().adapter, gpu.info().backend);
    println!(
        "model: {}, {} steps, sampler {}, guidance {}, seeds {seeds:?}: {total} images, {seconds:.2} s each",
        model.display(),
        args.sampling.steps,
        args.sampling.scheduler.as_deref().map_or_else(|| sd.default_scheduler().unwrap_or("?").to_string(), str::to_string),
        args.sampling.guidance,
    );
    println!("\n{}\n\n{}", score::summary(&list, &outcomes), score::per_shape(&list, &outcomes));
    if let Some(path) = &args.sheet {
        let png = encode_png(&sheet::contact_sheet(&images, list.ground_truth.columns), None)?;
        std::fs::write(path, png).map_err(|e| Error::io(path, e))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Every tile of `sheet` (laid out as the ground truth) analysed against its prompt;
/// `file` names the sheet in errors.
fn sheet_outcomes(list: &PromptList, sheet: &RgbImage, file: &str) -> Result<Vec<score::Outcome>> {
    let layout = &list.ground_truth;
    let rows = sheet.height / layout.tile;
    if sheet.width != layout.tile * layout.columns || rows == 0 || !sheet.height.is_multiple_of(layout.tile) {
        return Err(Error::Format {
            file: file.to_string(),
            detail: format!("{}x{} is not rows of {} tiles of {} pixels", sheet.width, sheet.height, layout.columns, layout.tile),
        });
    }
    let palette = list.palette();
    Ok((0..rows * layout.columns)
        .map(|index| {
            let analysis = analyse::analyse(&sheet::tile(sheet, index, layout.tile, layout.columns), &palette);
            score::Outcome { prompt: index % list.prompts.len(), analysis }
        })
        .collect())
}

/// Scores the sheets at `paths` together and prints the tables.
fn score_sheets(list: &PromptList, paths: &[PathBuf]) -> Result<()> {
    let mut outcomes = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: file.clone(), detail: e.to_string() })?;
        let tiles = sheet_outcomes(list, &decode_png(&bytes)?, &file)?;
        println!("sheet: {file} ({} tiles)", tiles.len());
        outcomes.extend(tiles);
    }
    println!("\n{}\n\n{}", score::summary(list, &outcomes), score::per_shape(list, &outcomes));
    Ok(())
}
