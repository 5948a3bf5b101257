//! Tallying the analyser's readings against the prompts: accuracy per prompt group
//! (seen combinations, each kind of held-out one) and per shape, as markdown tables.

use std::collections::BTreeMap;

use super::analyse::Analysis;
use super::shape::Shape;
use webdiffusion_cli::prompts::{EvalPrompt, PromptList};

/// One generated image: its prompt (an index into the list) and what the analyser read.
pub struct Outcome {
    pub prompt: usize,
    pub analysis: Option<Analysis>,
}

/// What was read right of one image.
struct Verdict {
    colour: bool,
    shape: bool,
    cell: bool,
    size: bool,
}

fn verdict(list: &PromptList, prompt: &EvalPrompt, analysis: Option<&Analysis>) -> Verdict {
    match analysis {
        None => Verdict { colour: false, shape: false, cell: false, size: false },
        Some(a) => Verdict {
            colour: Some(a.colour) == list.colour_index(&prompt.colour),
            shape: Some(a.shape) == Shape::from_name(&prompt.shape),
            cell: a.cell == prompt.cell,
            size: a.large == (prompt.size == "large"),
        },
    }
}

/// "red star at the top left, large" for a progress line; "no object" when none was found.
pub fn describe(list: &PromptList, analysis: Option<&Analysis>) -> String {
    match analysis {
        None => "no object".into(),
        Some(a) => format!(
            "{} {} at the {}, {}",
            list.colours[a.colour].name,
            a.shape.name(),
            list.cells[a.cell],
            if a.large { "large" } else { "small" }
        ),
    }
}

#[derive(Default)]
struct Tally {
    images: usize,
    colour: usize,
    shape: usize,
    cell: usize,
    size: usize,
    all: usize,
}

impl Tally {
    fn add(&mut self, v: &Verdict) {
        self.images += 1;
        self.colour += usize::from(v.colour);
        self.shape += usize::from(v.shape);
        self.cell += usize::from(v.cell);
        self.size += usize::from(v.size);
        self.all += usize::from(v.colour && v.shape && v.cell && v.size);
    }

    fn percent(&self, right: usize) -> String {
        if self.images == 0 { "-".into() } else { format!("{:.1}%", 100.0 * right as f64 / self.images as f64) }
    }
}

/// Whether a prompt belongs to a group of the summary.
type Membership = fn(&EvalPrompt) -> bool;

/// Colour, shape, position and size accuracy for seen prompts, each kind of held-out
/// prompt, all held-out ones and everything.
pub fn summary(list: &PromptList, outcomes: &[Outcome]) -> String {
    let groups: [(&str, Membership); 5] = [
        ("seen combinations", |p| p.held_out_kind.is_none()),
        ("held out: colour + shape", |p| p.held_out_kind.as_deref() == Some("colour_shape")),
        ("held out: shape + position", |p| p.held_out_kind.as_deref() == Some("shape_position")),
        ("held out, all", |p| p.held_out_kind.is_some()),
        ("all prompts", |_| true),
    ];
    let mut table = String::from("| prompts | images | colour | shape | position | size | all four |\n|---|---:|---:|---:|---:|---:|---:|");
    for (name, member) in groups {
        let mut tally = Tally::default();
        for outcome in outcomes {
            let prompt = &list.prompts[outcome.prompt];
            if member(prompt) {
                tally.add(&verdict(list, prompt, outcome.analysis.as_ref()));
            }
        }
        table.push_str(&format!(
            "\n| {name} | {} | {} | {} | {} | {} | {} |",
            tally.images,
            tally.percent(tally.colour),
            tally.percent(tally.shape),
            tally.percent(tally.cell),
            tally.percent(tally.size),
            tally.percent(tally.all)
        ));
    }
    table
}

/// Per asked-for shape: shape accuracy on seen and held-out prompts and what the analyser
/// read instead, most frequent first.
pub fn per_shape(list: &PromptList, outcomes: &[Outcome]) -> String {
    let mut table = String::from("| shape | seen: right | held out: right | read instead |\n|---|---:|---:|---|");
    for shape in Shape::ALL {
        let (mut seen, mut held) = (Tally::default(), Tally::default());
        let mut instead: BTreeMap<&str, usize> = BTreeMap::new();
        for outcome in outcomes.iter().filter(|o| list.prompts[o.prompt].shape == shape.name()) {
            let prompt = &list.prompts[outcome.prompt];
            let v = verdict(list, prompt, outcome.analysis.as_ref());
            if !v.shape {
                *instead.entry(outcome.analysis.as_ref().map_or("no object", |a| a.shape.name())).or_default() += 1;
            }
            if prompt.held_out_kind.is_some() { &mut held } else { &mut seen }.add(&v);
        }
        let mut instead: Vec<(&str, usize)> = instead.into_iter().collect();
        instead.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let instead: Vec<String> = instead.iter().map(|(name, n)| format!("{name} {n}")).collect();
        let cell = |t: &Tally| if t.images == 0 { "-".to_string() } else { format!("{}/{} ({})", t.shape, t.images, t.percent(t.shape)) };
        table.push_str(&format!("\n| {} | {} | {} | {} |", shape.name(), cell(&seen), cell(&held), instead.join(", ")));
    }
    table
}
