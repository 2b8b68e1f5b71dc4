//! `bhyvectl --get-stats` output: one `description<TAB>value` line per counter.

/// The counters of one vCPU, as bhyvectl printed them.
#[derive(Debug, Clone, Default)]
pub struct Stats(pub Vec<(String, u64)>);

impl Stats {
    /// Parses bhyvectl's lines; the `vcpuN stats:` header and anything that does not
    /// end in a number are skipped.
    pub fn parse(text: &str) -> Stats {
        Stats(
            text.lines()
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once('\t')?;
                    Some((name.trim().to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// The counter whose description starts with `prefix`.
    pub fn get(&self, prefix: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| *v)
    }

    /// Every exit of the vCPU ("total number of vm exits").
    pub fn total_exits(&self) -> Option<u64> {
        self.get("total number of vm exits")
    }

    /// Exits that went back to userspace (bhyve).
    pub fn user_exits(&self) -> Option<u64> {
        self.get("vm exits returned to userspace")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bhyvectl_lines() {
        let s = Stats::parse(
            "vcpu0 stats:\ntotal number of vm exits                \t34314\n\
             vm exits returned to userspace   \t33388\nwfi instructions executed\t0\n",
        );
        assert_eq!(s.total_exits(), Some(34314));
        assert_eq!(s.user_exits(), Some(33388));
        assert_eq!(s.get("wfi"), Some(0));
        assert_eq!(s.get("nothing"), None);
    }
}
