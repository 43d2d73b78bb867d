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
/// `family=strategy` for one family, comma-separated (`kprobe,state=tracepoint`); an optional
/// family can also be `family=off`, not attached at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StrategyChoice {
    /// Every family that has this strategy must use it; the others choose as with `auto`.
    pub all: Option<Strategy>,
    /// These families must use these strategies.
    pub families: Vec<(&'static str, Strategy)>,
    /// These optional families are not attached (`family=off`).
    pub off: Vec<&'static str>,
}

/// Why a `--probe-strategy` value does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StrategyError {
    #[error(
        "unknown strategy `{0}` (expected fentry, tracepoint or kprobe; or `off` for one of the \
         optional families: {optional})",
        optional = optional_names()
    )]
    UnknownStrategy(String),
    #[error(
        "the {name} family cannot be turned off: tcpobs needs it (optional families: {})",
        optional_names()
    )]
    Required { name: &'static str },
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
                    choice.families.retain(|(other, _)| *other != family.name);
                    choice.off.retain(|other| *other != family.name);
                    if strategy == "off" {
                        if !family.optional {
                            return Err(StrategyError::Required { name: family.name });
                        }
                        choice.off.push(family.name);
                        continue;
                    }
                    let strategy = parse_strategy(strategy)?;
                    if !family.ways.iter().any(|way| way.strategy == strategy) {
                        return Err(StrategyError::NoSuchWay { family, strategy });
                    }
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
        items.extend(self.off.iter().map(|family| format!("{family}=off")));
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

fn optional_names() -> String {
    FAMILIES
        .iter()
        .filter(|family| family.optional)
        .map(|family| family.name)
        .collect::<Vec<_>>()
        .join(", ")
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
    /// Whether `family` is turned off (`family=off`).
    pub(super) fn is_off(&self, family: &Family) -> bool {
        self.off.contains(&family.name)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loader::families::family;

    fn by_name(name: &str) -> &'static Family {
        FAMILIES.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn an_optional_family_can_be_turned_off() {
        let choice: StrategyChoice = "kprobe,accept=off,drops=tracepoint".parse().unwrap();
        assert_eq!(choice.all, Some(Strategy::Kprobe));
        assert_eq!(choice.off, [family::ACCEPT]);
        assert!(choice.is_off(by_name(family::ACCEPT)));
        assert!(!choice.is_off(by_name(family::DROPS)));
        assert_eq!(choice.to_string(), "kprobe,drops=tracepoint,accept=off");
        assert_eq!(choice.to_string().parse::<StrategyChoice>(), Ok(choice));
    }

    #[test]
    fn the_last_word_on_a_family_wins() {
        let off_then_on: StrategyChoice = "accept=off,accept=tracepoint".parse().unwrap();
        assert!(off_then_on.off.is_empty());
        assert_eq!(
            off_then_on.families,
            [(family::ACCEPT, Strategy::Tracepoint)]
        );
        let on_then_off: StrategyChoice = "accept=tracepoint,accept=off".parse().unwrap();
        assert!(on_then_off.families.is_empty());
        assert_eq!(on_then_off.off, [family::ACCEPT]);
    }

    #[test]
    fn a_required_family_cannot_be_turned_off() {
        let err = "state=off".parse::<StrategyChoice>().unwrap_err();
        assert_eq!(
            err,
            StrategyError::Required {
                name: family::STATE
            }
        );
        let text = err.to_string();
        assert!(text.contains("accept") && text.contains("drops"), "{text}");
        let err = "off".parse::<StrategyChoice>().unwrap_err();
        assert!(err.to_string().contains("`off` for one of"), "{err}");
    }
}
