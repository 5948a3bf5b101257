//! A small WGSL preprocessor: `#include "file.wgsl"`, `#ifdef NAME`, `#ifndef NAME`,
//! `#else`, `#endif`, and whole-word replacement of defines that carry a value.
//! WGSL `override` constants cannot change types or remove bindings; this can.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::shaders;

/// Expands the shader file `name` with `defines` (`("TILE", "16")`, or `("FLAG", "")`
/// for a flag that only `#ifdef` looks at).
pub fn preprocess(name: &str, defines: &[(&str, String)]) -> Result<String> {
    let defines: BTreeMap<&str, &str> = defines.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = String::new();
    let mut included = BTreeSet::new();
    expand(name, &defines, &mut included, &mut out)?;
    Ok(substitute(&out, &defines))
}

fn err(shader: &str, detail: impl Into<String>) -> Error {
    Error::Shader { shader: shader.to_string(), detail: detail.into() }
}

fn expand<'a>(name: &'a str, defines: &BTreeMap<&str, &str>, included: &mut BTreeSet<&'a str>, out: &mut String) -> Result<()> {
    if !included.insert(name) {
        return Ok(()); // each file once, like #pragma once
    }
    let source = shaders::source(name).ok_or_else(|| err(name, "no such shader file"))?;
    // Each open #ifdef: (this branch is taken, the enclosing code is taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.last().is_none_or(|&(on, outer)| on && outer);
    for (number, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        let directive = |prefix: &str| trimmed.strip_prefix(prefix).map(str::trim);
        if let Some(flag) = directive("#ifdef ") {
            let outer = active(&stack);
            stack.push((defines.contains_key(flag), outer));
        } else if let Some(flag) = directive("#ifndef ") {
            let outer = active(&stack);
            stack.push((!defines.contains_key(flag), outer));
        } else if trimmed.starts_with("#else") {
            let top = stack.last_mut().ok_or_else(|| err(name, format!("line {}: #else without #ifdef", number + 1)))?;
            top.0 = !top.0;
        } else if trimmed.starts_with("#endif") {
            stack.pop().ok_or_else(|| err(name, format!("line {}: #endif without #ifdef", number + 1)))?;
        } else if let Some(file) = directive("#include ") {
            if active(&stack) {
                let file = shaders::name_of(file.trim_matches('"'))
                    .ok_or_else(|| err(name, format!("line {}: unknown include {file}", number + 1)))?;
                expand(file, defines, included, out)?;
            }
        } else if trimmed.starts_with('#') {
            return Err(err(name, format!("line {}: unknown directive {trimmed}", number + 1)));
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err(name, "#ifdef without #endif"));
    }
    Ok(())
}

/// Replaces every identifier that names a define with a value by that value.
fn substitute(source: &str, defines: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.push_str(&rest[..start]);
        let word_len = rest[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        match defines.get(word) {
            Some(value) if !value.is_empty() => out.push_str(value),
            _ => out.push_str(word),
        }
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_whole_words_only() {
        let defines = BTreeMap::from([("TILE", "16"), ("ELEM", "f32"), ("FLAG", "")]);
        let out = substitute("let a = TILE * TILE_X; var<private> b: ELEM; FLAG", &defines);
        assert_eq!(out, "let a = 16 * TILE_X; var<private> b: f32; FLAG");
    }

    #[test]
    fn unknown_shader_is_an_error() {
        assert!(matches!(preprocess("nope.wgsl", &[]), Err(Error::Shader { .. })));
    }
}
