//! `--probe-strategy` and `--tracepoints`: which ways each hook family may be attached by,
//! and in which order they are tried.

use std::{fmt, str::FromStr};

use thiserror::Error;

use super::{
    FAMILIES, Strategy,
    families::{Family, Way},
};

/// Which tracepoint flavours the loader may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TracepointMode {
    /// `tp_btf` where it loads, else the classic tracepoint.
    #[default]
    Auto,
    /// `tp_btf` only.
    Btf,
    /// Classic tracepoints only.
    Classic,
}

/// `--probe-strategy`: `auto`, one strategy for every family that has it, and/or
/// `family=strategy` for one family, comma-separated (`kprobe,state=tracepoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StrategyChoice {
    /// Every family that has this strategy must use it; the others choose as with `auto`.
    pub all: Option<Strategy>,
    /// These families must use these strategies.
    pub families: Vec<(&'static str, Strategy)>,
}

/// Why a `--probe-strategy` value does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StrategyError {
    #[error("unknown strategy `{0}` (expected fentry, tracepoint or kprobe)")]
    UnknownStrategy(String),
    #[error("unknown hook family `{name}` (expected one of: {})", family_names())]
    UnknownFamily { name: String },
    #[error(
        "the {} family has no {} strategy (it has: {})",
        family.name,
        strategy.as_str(),
        strategies_of(family)
    )]
    NoSuchWay {
        family: &'static Family,
        strategy: Strategy,
    },
}

fn parse_strategy(text: &str) -> Result<Strategy, StrategyError> {
    Strategy::ALL
        .into_iter()
        .find(|strategy| strategy.as_str() == text)
        .ok_or_else(|| StrategyError::UnknownStrategy(text.to_owned()))
}

impl FromStr for StrategyChoice {
    type Err = StrategyError;

    fn from_str(text: &str) -> Result<Self, StrategyError> {
        let mut choice = Self::default();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            match item.split_once('=') {
                None if item == "auto" => {}
                None => choice.all = Some(parse_strategy(item)?),
                Some((name, strategy)) => {
                    let family = FAMILIES
                        .iter()
                        .find(|family| family.name == name)
                        .ok_or_else(|| StrategyError::UnknownFamily {
                            name: name.to_owned(),
                        })?;
                    let strategy = parse_strategy(strategy)?;
                    if !family.ways.iter().any(|way| way.strategy == strategy) {
                        return Err(StrategyError::NoSuchWay { family, strategy });
                    }
                    choice.families.retain(|(other, _)| *other != family.name);
                    choice.families.push((family.name, strategy));
                }
            }
        }
        Ok(choice)
    }
}

impl fmt::Display for StrategyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = self.all.iter().map(|s| s.as_str().to_owned()).collect();
        items.extend(
            self.families
                .iter()
                .map(|(family, strategy)| format!("{family}={}", strategy.as_str())),
        );
        if items.is_empty() {
            f.write_str("auto")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

fn family_names() -> String {
    FAMILIES.map(|family| family.name).join(", ")
}

fn strategies_of(family: &Family) -> String {
    family
        .ways
        .iter()
        .map(|way| way.strategy.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StrategyChoice {
    /// The ways to try for `family`, in order, and whether one was forced.
    pub(super) fn ways(&self, family: &Family) -> (Vec<Way>, bool) {
        let forced = self
            .families
            .iter()
            .find(|(name, _)| *name == family.name)
            .map(|&(_, strategy)| strategy)
            .or(self
                .all
                .filter(|all| family.ways.iter().any(|way| way.strategy == *all)));
        match forced {
            Some(strategy) => (
                family
                    .ways
                    .iter()
                    .filter(|way| way.strategy == strategy)
                    .copied()
                    .collect(),
                true,
            ),
            None => (family.ways.to_vec(), false),
        }
    }
}
