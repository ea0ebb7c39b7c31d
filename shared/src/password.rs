//! Password generation with AWS's policy knobs, from the OS CSPRNG.
//!
//! AWS's functions call GetRandomPassword; Rotor generates locally (one round
//! trip fewer per rotation) with the same environment variables and defaults:
//! `PASSWORD_LENGTH` (32), `EXCLUDE_CHARACTERS` (engine default),
//! `EXCLUDE_NUMBERS`, `EXCLUDE_PUNCTUATION`, `EXCLUDE_UPPERCASE`,
//! `EXCLUDE_LOWERCASE` (false) and `REQUIRE_EACH_INCLUDED_TYPE` (true).
//! Booleans follow AWS's parsing: the value `true` in any case is true,
//! everything else false.

use rand::TryRng;
use rand::rngs::SysRng;

use crate::error::{Error, Result};
use crate::secret::SecretString;

/// GetRandomPassword's punctuation set.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const UPPERCASE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWERCASE: &str = "abcdefghijklmnopqrstuvwxyz";
const DIGITS: &str = "0123456789";

/// How new passwords look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub length: usize,
    pub exclude_characters: String,
    pub exclude_numbers: bool,
    pub exclude_punctuation: bool,
    pub exclude_uppercase: bool,
    pub exclude_lowercase: bool,
    pub require_each_included_type: bool,
}

impl PasswordPolicy {
    /// AWS's defaults with the given `EXCLUDE_CHARACTERS` default.
    pub fn with_default_exclusions(exclude_characters: &str) -> Self {
        PasswordPolicy {
            length: 32,
            exclude_characters: exclude_characters.to_string(),
            exclude_numbers: false,
            exclude_punctuation: false,
            exclude_uppercase: false,
            exclude_lowercase: false,
            require_each_included_type: true,
        }
    }

    /// Reads AWS's environment variables over the engine's defaults.
    pub fn from_env(default_exclusions: &str) -> Result<Self> {
        Self::from_lookup(default_exclusions, |k| std::env::var(k).ok())
    }

    /// Same as [`from_env`](Self::from_env) with an injectable lookup (tests).
    pub fn from_lookup(
        default_exclusions: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let flag = |name: &str, default: bool| {
            lookup(name).map_or(default, |v| v.trim().eq_ignore_ascii_case("true"))
        };
        let length = match lookup("PASSWORD_LENGTH") {
            None => 32,
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "PASSWORD_LENGTH={v:?} is not a whole number; set it between 1 and 4096"
                ))
            })?,
        };
        let policy = PasswordPolicy {
            length,
            exclude_characters: lookup("EXCLUDE_CHARACTERS")
                .unwrap_or_else(|| default_exclusions.to_string()),
            exclude_numbers: flag("EXCLUDE_NUMBERS", false),
            exclude_punctuation: flag("EXCLUDE_PUNCTUATION", false),
            exclude_uppercase: flag("EXCLUDE_UPPERCASE", false),
            exclude_lowercase: flag("EXCLUDE_LOWERCASE", false),
            require_each_included_type: flag("REQUIRE_EACH_INCLUDED_TYPE", true),
        };
        policy.classes()?;
        Ok(policy)
    }

    /// The character classes in use, each already stripped of exclusions.
    fn classes(&self) -> Result<Vec<Vec<char>>> {
        if !(1..=4096).contains(&self.length) {
            return Err(Error::Config(format!(
                "PASSWORD_LENGTH={} is out of range; set it between 1 and 4096",
                self.length
            )));
        }
        let mut classes = Vec::new();
        for (excluded, set) in [
            (self.exclude_uppercase, UPPERCASE),
            (self.exclude_lowercase, LOWERCASE),
            (self.exclude_numbers, DIGITS),
            (self.exclude_punctuation, PUNCTUATION),
        ] {
            if excluded {
                continue;
            }
            let chars: Vec<char> = set
                .chars()
                .filter(|c| !self.exclude_characters.contains(*c))
                .collect();
            if !chars.is_empty() {
                classes.push(chars);
            }
        }
        if classes.is_empty() {
            return Err(Error::Config(
                "the password policy excludes every character; relax EXCLUDE_* settings".into(),
            ));
        }
        if self.require_each_included_type && classes.len() > self.length {
            return Err(Error::Config(format!(
                "PASSWORD_LENGTH={} is shorter than the {} character types REQUIRE_EACH_INCLUDED_TYPE asks for",
                self.length,
                classes.len()
            )));
        }
        Ok(classes)
    }

    /// Every character a generated password may contain.
    pub fn alphabet(&self) -> Result<Vec<char>> {
        Ok(self.classes()?.concat())
    }

    /// A new password from the OS CSPRNG.
    pub fn generate(&self) -> Result<SecretString> {
        let classes = self.classes()?;
        let alphabet: Vec<char> = classes.concat();
        let mut rng = Picker::new();
        let mut chars: Vec<char> = Vec::with_capacity(self.length);
        if self.require_each_included_type {
            for class in &classes {
                chars.push(class[rng.below(class.len())?]);
            }
        }
        while chars.len() < self.length {
            chars.push(alphabet[rng.below(alphabet.len())?]);
        }
        // Fisher–Yates, so the guaranteed characters sit at random positions.
        for i in (1..chars.len()).rev() {
            let j = rng.below(i + 1)?;
            chars.swap(i, j);
        }
        let password: String = chars.iter().collect();
        chars.iter_mut().for_each(|c| *c = '\0');
        Ok(SecretString::new(password))
    }
}

/// Unbiased indices from the OS random source.
struct Picker {
    buf: [u8; 256],
    pos: usize,
}

impl Picker {
    fn new() -> Self {
        Picker {
            buf: [0; 256],
            pos: 256,
        }
    }

    fn next_u32(&mut self) -> Result<u32> {
        if self.pos + 4 > self.buf.len() {
            SysRng.try_fill_bytes(&mut self.buf).map_err(|e| {
                Error::Config(format!("the OS random number generator failed: {e}"))
            })?;
            self.pos = 0;
        }
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(u32::from_le_bytes(word))
    }

    /// A uniform number in `0..n` by rejection sampling.
    fn below(&mut self, n: usize) -> Result<usize> {
        let n = n as u32;
        let zone = u32::MAX - (u32::MAX % n);
        loop {
            let x = self.next_u32()?;
            if x < zone {
                return Ok((x % n) as usize);
            }
        }
    }
}

impl Drop for Picker {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(vars: &[(&str, &str)]) -> Result<PasswordPolicy> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PasswordPolicy::from_lookup(":/@\"'\\", |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_aws() {
        let p = policy(&[]).unwrap();
        assert_eq!(p.length, 32);
        assert!(p.require_each_included_type);
        let pw = p.generate().unwrap();
        assert_eq!(pw.expose().chars().count(), 32);
        for c in ":/@\"'\\".chars() {
            assert!(!pw.expose().contains(c));
        }
    }

    #[test]
    fn each_included_type_is_present_every_time() {
        let p = policy(&[("PASSWORD_LENGTH", "4")]).unwrap();
        for _ in 0..500 {
            let pw = p.generate().unwrap();
            let s = pw.expose();
            assert!(s.chars().any(|c| c.is_ascii_uppercase()), "{}", s.len());
            assert!(s.chars().any(|c| c.is_ascii_lowercase()));
            assert!(s.chars().any(|c| c.is_ascii_digit()));
            assert!(s.chars().any(|c| c.is_ascii_punctuation()));
        }
    }

    #[test]
    fn exclusions_are_honoured() {
        let p = policy(&[
            ("EXCLUDE_PUNCTUATION", "TRUE"),
            ("EXCLUDE_UPPERCASE", "true"),
            ("EXCLUDE_NUMBERS", "yes"), // not "true": stays included, as in AWS
            ("EXCLUDE_CHARACTERS", "abc"),
            ("PASSWORD_LENGTH", "64"),
        ])
        .unwrap();
        let pw = p.generate().unwrap();
        let s = pw.expose();
        assert_eq!(s.len(), 64);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(!s.contains(['a', 'b', 'c']));
        assert!(s.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn impossible_policies_are_config_errors() {
        assert!(policy(&[("PASSWORD_LENGTH", "0")]).is_err());
        assert!(policy(&[("PASSWORD_LENGTH", "abc")]).is_err());
        assert!(policy(&[("PASSWORD_LENGTH", "3")]).is_err());
        assert!(
            policy(&[
                ("PASSWORD_LENGTH", "3"),
                ("REQUIRE_EACH_INCLUDED_TYPE", "false")
            ])
            .is_ok()
        );
        assert!(
            policy(&[
                ("EXCLUDE_PUNCTUATION", "true"),
                ("EXCLUDE_UPPERCASE", "true"),
                ("EXCLUDE_LOWERCASE", "true"),
                ("EXCLUDE_NUMBERS", "true"),
            ])
            .is_err()
        );
    }

    #[test]
    fn distribution_covers_the_alphabet() {
        let p = policy(&[("PASSWORD_LENGTH", "4096")]).unwrap();
        let pw = p.generate().unwrap();
        let alphabet = p.alphabet().unwrap();
        for c in alphabet {
            assert!(
                pw.expose().contains(c),
                "{c:?} never drawn in 4096 characters"
            );
        }
    }
}
