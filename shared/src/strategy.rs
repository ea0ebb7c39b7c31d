//! Rotation strategies, as data: which login performs the change and what
//! the next username is. The protocol in [`crate::rotation`] reads these;
//! there is no second copy of the protocol per strategy.

/// How a secret's credentials are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The user changes its own password. Between setSecret and finishSecret
    /// only the pending password logs in: the same window AWS's single-user
    /// functions have, as long as Secrets Manager takes to invoke testSecret
    /// and finishSecret (`rotor rotate` runs them at once).
    SingleUser,
    /// A master credential (`masterarn`) maintains `<user>` and
    /// `<user>_clone`; they take turns, so AWSCURRENT always logs in.
    AlternatingUsers,
}

/// The suffix AWS's multi-user functions append.
pub const CLONE_SUFFIX: &str = "_clone";

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::SingleUser => "single-user",
            Strategy::AlternatingUsers => "alternating-users",
        }
    }

    /// The username the next version carries.
    pub fn next_username(self, current: &str) -> String {
        match self {
            Strategy::SingleUser => current.to_string(),
            Strategy::AlternatingUsers => match current.strip_suffix(CLONE_SUFFIX) {
                Some(base) if !base.is_empty() => base.to_string(),
                _ => format!("{current}{CLONE_SUFFIX}"),
            },
        }
    }

    /// Whether setSecret logs in with the master secret.
    pub fn uses_master(self) -> bool {
        self == Strategy::AlternatingUsers
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_names_take_turns() {
        let s = Strategy::AlternatingUsers;
        assert_eq!(s.next_username("app"), "app_clone");
        assert_eq!(s.next_username("app_clone"), "app");
        assert_eq!(s.next_username("_clone"), "_clone_clone");
        assert_eq!(Strategy::SingleUser.next_username("app"), "app");
    }
}
