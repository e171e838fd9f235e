//! The topology manager, as kubelet's: at admission it asks the hint
//! providers (the CPU manager's static policy, the device plugins' devices
//! with their NUMA nodes) where each container's resources could come from,
//! as sets of NUMA nodes ("hints", each preferred or not), merges them into
//! the best placement, admits or refuses the pod by its policy, and hands the
//! chosen NUMA nodes to the providers, which take their CPUs and devices
//! there first.
//!
//! - `none`: no hints, no alignment (the default);
//! - `best-effort`: the best placement is used, the pod admitted whatever it is;
//! - `restricted`: the pod is refused (`TopologyAffinityError`) unless the
//!   best placement is a preferred one;
//! - `single-numa-node`: only placements on one NUMA node count, and the pod is
//!   refused unless one is preferred.
//!
//! Scope `container` (the default) decides container by container, each
//! seeing what the ones before it took; scope `pod` decides once for the
//! whole pod's requests. The merge is pure and tested on synthetic
//! machines (2 and 4 NUMA nodes).

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

/// A set of NUMA nodes, as a bit per node id (kubelet refuses machines of
/// more than 8 NUMA nodes by default; 64 is plenty).
pub type Mask = u64;

pub fn mask_of(nodes: impl IntoIterator<Item = u32>) -> Mask {
    nodes.into_iter().filter(|n| *n < 64).fold(0, |m, n| m | (1u64 << n))
}

pub fn nodes_of(mask: Mask) -> BTreeSet<u32> {
    (0..64).filter(|n| mask & (1u64 << n) != 0).collect()
}

/// A placement a provider could give: its NUMA nodes, and whether it is
/// one of the narrowest that could serve the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// None: any NUMA node (no preference).
    pub mask: Option<Mask>,
    pub preferred: bool,
}

/// What one provider says for one resource: None for no preference, an
/// empty list when it cannot serve the request anywhere.
pub type Hints = Option<Vec<Hint>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    None,
    BestEffort,
    Restricted,
    SingleNumaNode,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "" | "none" => Some(Policy::None),
            "best-effort" => Some(Policy::BestEffort),
            "restricted" => Some(Policy::Restricted),
            "single-numa-node" => Some(Policy::SingleNumaNode),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::BestEffort => "best-effort",
            Policy::Restricted => "restricted",
            Policy::SingleNumaNode => "single-numa-node",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Container,
    Pod,
}

/// The topology manager's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub policy: Policy,
    pub scope: Scope,
}

/// kubelet's refusal.
pub const REASON: &str = "TopologyAffinityError";
pub const MESSAGE: &str = "Resources cannot be allocated with Topology locality";

/// Every mask of `nodes`' NUMA nodes, as kubelet iterates them (by size,
/// then by value).
pub fn masks(nodes: Mask) -> Vec<Mask> {
    let ids: Vec<u32> = nodes_of(nodes).into_iter().collect();
    let mut out: Vec<Mask> = (1u64..(1u64 << ids.len())).map(|sel| mask_of(ids.iter().enumerate().filter(|(i, _)| sel & (1 << i) != 0).map(|(_, n)| *n))).collect();
    out.sort_by_key(|m| (m.count_ones(), *m));
    out
}

/// kubelet's hint generation, shared by the providers: for every mask of the
/// machine's NUMA nodes where `available` (the NUMA nodes of each free unit,
/// a CPU or a device) has `request` units, a hint; preferred when the mask is
/// as narrow as the narrowest that `all` units could ever serve the request from.
pub fn generate(machine: Mask, request: usize, available: &[Mask], all: &[Mask]) -> Vec<Hint> {
    let mut min_size = machine.count_ones();
    let mut hints = Vec::new();
    for m in masks(machine) {
        if all.iter().filter(|u| *u & m != 0).count() >= request && m.count_ones() < min_size {
            min_size = m.count_ones();
        }
        if available.iter().filter(|u| *u & m != 0).count() >= request {
            hints.push(Hint { mask: Some(m), preferred: false });
        }
    }
    for h in &mut hints {
        h.preferred = h.mask.is_some_and(|m| m.count_ones() == min_size);
    }
    hints
}

/// Whether `a` is a narrower placement than `b`: fewer NUMA nodes, or as
/// many with lower ids.
fn narrower(a: Mask, b: Mask) -> bool {
    (a.count_ones(), a) < (b.count_ones(), b)
}

/// The best placement of the providers' hints under `policy`, and whether
/// the pod (or container) is admitted with it.
pub fn merge(machine: Mask, policy: Policy, providers: &[Hints]) -> (Hint, bool) {
    if policy == Policy::None {
        return (Hint { mask: None, preferred: true }, true);
    }
    // No preference is "anywhere, preferred"; "nowhere" is "anywhere, not preferred".
    let mut lists: Vec<Vec<Hint>> = providers
        .iter()
        .map(|h| match h {
            None => vec![Hint { mask: None, preferred: true }],
            Some(v) if v.is_empty() => vec![Hint { mask: None, preferred: false }],
            Some(v) => v.clone(),
        })
        .collect();
    if policy == Policy::SingleNumaNode {
        for l in &mut lists {
            l.retain(|h| h.preferred && h.mask.is_none_or(|m| m.count_ones() == 1));
        }
    }
    let mut best = Hint { mask: Some(machine), preferred: false };
    // The cross product of the providers' hints.
    let mut idx = vec![0usize; lists.len()];
    if lists.iter().all(|l| !l.is_empty()) {
        loop {
            let mut mask = machine;
            let mut preferred = true;
            for (l, i) in lists.iter().zip(&idx) {
                let h = l[*i];
                mask &= h.mask.unwrap_or(machine);
                preferred &= h.preferred;
            }
            if mask != 0 {
                let bm = best.mask.unwrap_or(machine);
                let better = (preferred && !best.preferred) || (preferred == best.preferred && narrower(mask, bm));
                if better {
                    best = Hint { mask: Some(mask), preferred };
                }
            }
            // Next permutation.
            let mut k = 0;
            loop {
                if k == idx.len() {
                    break;
                }
                idx[k] += 1;
                if idx[k] < lists[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
            if k == idx.len() {
                break;
            }
        }
    }
    if policy == Policy::SingleNumaNode && best.mask == Some(machine) {
        best.mask = None;
    }
    let admit = match policy {
        Policy::None | Policy::BestEffort => true,
        Policy::Restricted | Policy::SingleNumaNode => best.preferred,
    };
    (best, admit)
}

/// The topology manager of a node: its settings and the node's NUMA nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Manager {
    pub config: Config,
    /// The machine's NUMA nodes (from sysfs).
    pub machine: Mask,
}

impl Manager {
    pub fn is_on(&self) -> bool {
        self.config.policy != Policy::None
    }
}
