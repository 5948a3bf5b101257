//! CLIP's BPE tokenizer as Stable Diffusion's pipelines use it (transformers'
//! `CLIPTokenizer`), built with the `tokenizers` crate from `vocab.json` and
//! `merges.txt` held in memory, so it runs the same natively and in the browser.

use std::collections::HashMap;

use serde::Deserialize;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{Error, Result};
use crate::loader::ModelFiles;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The context length of every Stable Diffusion text encoder.
pub const DEFAULT_MAX_LEN: usize = 77;

/// CLIP's word pattern (openai/CLIP `simple_tokenizer.py`): contractions, letter runs,
/// single digits, runs of other non-space characters. Whitespace falls between matches.
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    max_len: usize,
}

/// A special token as tokenizer files write it: a plain string, or an `AddedToken`
/// object (`{"content": ..., ...}`) in older `special_tokens_map.json` files.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenEntry {
    Plain(String),
    Added { content: String },
}

impl TokenEntry {
    fn content(&self) -> &str {
        match self {
            TokenEntry::Plain(s) | TokenEntry::Added { content: s } => s,
        }
    }
}

/// The fields of `tokenizer_config.json` / `special_tokens_map.json` that change the ids.
#[derive(Deserialize, Default)]
struct TokenizerConfig {
    tokenizer_class: Option<String>,
    bos_token: Option<TokenEntry>,
    eos_token: Option<TokenEntry>,
    pad_token: Option<TokenEntry>,
    model_max_length: Option<f64>,
    do_lower_case: Option<bool>,
    add_prefix_space: Option<bool>,
}

impl ClipTokenizer {
    /// Loads `<component>/vocab.json` and `merges.txt`; the pad token and context length
    /// come from `tokenizer_config.json` and `special_tokens_map.json` when present (the
    /// latter wins, as in transformers), else CLIPTokenizer's defaults.
    pub fn load(files: &dyn ModelFiles, component: &str) -> Result<Self> {
        let path = |name: &str| crate::loader::component_file(component, name);
        let mut pad = END_OF_TEXT.to_string();
        let mut max_len = DEFAULT_MAX_LEN;
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let file = path(name);
            if !files.exists(&file) {
                continue;
            }
            let config: TokenizerConfig = crate::loader::read_config(files, &file)?;
            check_config(&config, &files.describe(&file))?;
            if let Some(token) = &config.pad_token {
                pad = token.content().to_string();
            }
            if let Some(len) = config.model_max_length {
                max_len = context_length(len, &files.describe(&file))?;
            }
        }
        let vocab = files.read(&path("vocab.json"))?;
        let merges = files.read(&path("merges.txt"))?;
        // Name the real file in errors about the vocabulary or the merges.
        Self::from_files(&vocab, &merges, &pad, max_len).map_err(|e| match e {
            Error::Format { file, detail } if file == "vocab.json" || file == "merges.txt" => {
                Error::Format { file: files.describe(&path(&file)), detail }
            }
            other => other,
        })
    }

    /// A tokenizer from the bytes of `vocab.json` and `merges.txt`, padding with
    /// `pad_token` (SD 1.x uses `<|endoftext|>`, SD 2.x `!`) to `max_len` ids.
    pub fn from_files(vocab_json: &[u8], merges_txt: &[u8], pad_token: &str, max_len: usize) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_slice(vocab_json).map_err(|e| format_error("vocab.json", e.to_string()))?;
        let merges = parse_merges(merges_txt)?;
        let id_of = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| format_error("vocab.json", format!("the vocabulary has no token {token:?}")))
        };
        let (bos, eos, pad_id) = (id_of(START_OF_TEXT)?, id_of(END_OF_TEXT)?, id_of(pad_token)?);
        if max_len < 2 {
            return Err(Error::shape("ClipTokenizer", format!("max_len {max_len} leaves no room for the start and end tokens")));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .unk_token(END_OF_TEXT.into())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| format_error("merges.txt", e.to_string()))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_normalizer(Some(normalizer()?)).map_err(internal)?;
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer()?));
        // <|startoftext|> ids <|endoftext|>, as transformers' CLIPTokenizer builds it.
        let specials =
            RobertaProcessing::new((END_OF_TEXT.into(), eos), (START_OF_TEXT.into(), bos)).trim_offsets(false).add_prefix_space(false);
        tokenizer.with_post_processor(Some(specials));
        // Special tokens are matched in the raw text before BPE (so with SD 2.x's pad
        // "!" every "!" becomes its own token, exactly as transformers does it).
        let mut added: Vec<AddedToken> = Vec::new();
        for token in [START_OF_TEXT, END_OF_TEXT, pad_token] {
            if !added.iter().any(|t| t.content == token) {
                added.push(AddedToken::from(token, true));
            }
        }
        tokenizer.add_special_tokens(added).map_err(internal)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(internal)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_string(),
        }));
        Ok(Self { tokenizer, max_len })
    }

    /// The `max_len` ids of `prompt`: `<|startoftext|>`, the BPE tokens (truncated so that
    /// `<|endoftext|>` still fits), `<|endoftext|>`, then the pad token.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(prompt, true).map_err(internal)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// How many ids `encode` returns.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

fn format_error(file: &str, detail: impl Into<String>) -> Error {
    Error::Format { file: file.to_string(), detail: detail.into() }
}

/// A failure inside `tokenizers` that valid files cannot cause.
fn internal(e: tokenizers::Error) -> Error {
    Error::Format { file: "tokenizer".into(), detail: e.to_string() }
}

/// NFC, whitespace runs to one space, lowercase: CLIP's `whitespace_clean(...).lower()`
/// (leading and trailing spaces vanish in the pre-tokenizer, which drops whitespace).
fn normalizer() -> Result<Normalizers> {
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(internal)?;
    Ok(Normalizers::new(vec![NFC.into(), whitespace.into(), Lowercase.into()]))
}

/// CLIP's word pattern keeps the matches; each word's UTF-8 bytes then map to the
/// printable characters the BPE vocabulary is written in.
fn pre_tokenizer() -> Result<PreTokenizers> {
    let words = Split::new(SplitPattern::Regex(WORD_PATTERN.into()), SplitDelimiterBehavior::Removed, true).map_err(internal)?;
    Ok(PreTokenizers::new(vec![words.into(), ByteLevel::new(false, false, false).into()]))
}

/// The pairs of `merges.txt`, one per line after the `#version` header.
fn parse_merges(merges_txt: &[u8]) -> Result<Merges> {
    let text = std::str::from_utf8(merges_txt).map_err(|e| format_error("merges.txt", e.to_string()))?;
    let mut merges = Merges::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        let Some((left, right)) = line.split_once(' ').filter(|(_, right)| !right.contains(' ')) else {
            return Err(format_error("merges.txt", format!("line {} is not a pair of tokens: {line:?}", number + 1)));
        };
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}

/// Rejects tokenizer settings this CLIP pipeline does not implement.
fn check_config(config: &TokenizerConfig, file: &str) -> Result<()> {
    let unsupported = |detail: String| Err(Error::Unsupported { file: file.to_string(), detail });
    if let Some(class) = config.tokenizer_class.as_deref().filter(|c| !matches!(*c, "CLIPTokenizer" | "CLIPTokenizerFast")) {
        return unsupported(format!("tokenizer_class {class:?}"));
    }
    if config.do_lower_case == Some(false) {
        return unsupported("do_lower_case false".into());
    }
    if config.add_prefix_space == Some(true) {
        return unsupported("add_prefix_space true".into());
    }
    for (field, token, expected) in [("bos_token", &config.bos_token, START_OF_TEXT), ("eos_token", &config.eos_token, END_OF_TEXT)] {
        if let Some(content) = token.as_ref().map(TokenEntry::content).filter(|c| *c != expected) {
            return unsupported(format!("{field} {content:?}"));
        }
    }
    Ok(())
}

/// transformers writes a huge float for "no limit"; SD's text encoders need a real length.
fn context_length(value: f64, file: &str) -> Result<usize> {
    if value.fract() == 0.0 && (2.0..=65536.0).contains(&value) {
        Ok(value as usize)
    } else {
        Err(Error::Unsupported { file: file.to_string(), detail: format!("model_max_length {value}") })
    }
}
