//! Ratios of criterion results, read back from criterion's `estimates.json` files after a
//! bench binary ran its groups.

use std::path::PathBuf;

/// Where criterion keeps its results: `$CRITERION_HOME`, else `criterion/` in the target
/// directory (`$CARGO_TARGET_DIR`, else the one holding this executable:
/// `target/<profile>/deps/<bench>`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Criterion's directory name for a group or function id.
fn dir_name(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect()
}

/// The median time per iteration, in nanoseconds, of `group/function` from the latest run.
pub fn median_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir()?
        .join(dir_name(group))
        .join(dir_name(function))
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

/// A table that gives, for each `(ours, reference)` pair of `group`, both medians, the
/// rate of each (per second) and the time ratio ours/reference.
pub fn ratios(group: &str, pairs: &[(&str, &str)]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "\n== {group}: criterion medians ==");
    let _ = writeln!(
        t,
        "{:<12} {:>10} {:>12} {:>24} {:>10} {:>12} {:>8}",
        "ours", "ns", "per s", "reference", "ns", "per s", "ratio"
    );
    for (ours, reference) in pairs {
        let _ = match (median_ns(group, ours), median_ns(group, reference)) {
            (Some(a), Some(b)) => writeln!(
                t,
                "{ours:<12} {a:>10.0} {:>12.0} {reference:>24} {b:>10.0} {:>12.0} {:>7.3}x",
                1e9 / a,
                1e9 / b,
                a / b
            ),
            _ => writeln!(t, "{ours:<12} (no result for {reference} in {group})"),
        };
    }
    t.push_str("ratio = time ours / time reference (1.000: as fast; 1.100: 10% slower)");
    t
}

/// Times `ours` and `reference` in alternation — `rounds` rounds of at least `iters` units
/// each (each call returns how many units it did: requests, round trips), the order
/// flipped every round — and returns the median time per unit of each and the median of
/// the per-round ratios. Alternating in short rounds makes the ratio robust to load that
/// comes and goes on a shared machine, which sequential criterion runs are not.
pub fn paired(
    name: &str,
    rounds: usize,
    iters: u64,
    mut ours: impl FnMut() -> u64,
    mut reference: impl FnMut() -> u64,
) -> Paired {
    let time = |f: &mut dyn FnMut() -> u64| {
        let start = std::time::Instant::now();
        let mut done = 0;
        while done < iters {
            done += f();
        }
        start.elapsed().as_nanos() as f64 / done as f64
    };
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let (x, y) = if round % 2 == 0 {
            let x = time(&mut ours);
            (x, time(&mut reference))
        } else {
            let y = time(&mut reference);
            (time(&mut ours), y)
        };
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    Paired {
        name: name.to_owned(),
        rounds: rounds.max(1),
        iters,
        ours_ns: median(&mut a),
        reference_ns: median(&mut b),
        ratio: median(&mut r),
    }
}

/// The result of [`paired`].
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// What was compared.
    pub name: String,
    /// Rounds run.
    pub rounds: usize,
    /// Units per round and side (at least).
    pub iters: u64,
    /// Median time per unit of ours, in nanoseconds.
    pub ours_ns: f64,
    /// Median time per unit of the reference, in nanoseconds.
    pub reference_ns: f64,
    /// Median of the per-round ratios (time ours / time reference).
    pub ratio: f64,
}

impl std::fmt::Display for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "paired {}: ours {:.0} ns ({:.0}/s), reference {:.0} ns ({:.0}/s), ratio {:.3}x \
             (median of {} alternating rounds of {})",
            self.name,
            self.ours_ns,
            1e9 / self.ours_ns,
            self.reference_ns,
            1e9 / self.reference_ns,
            self.ratio,
            self.rounds,
            self.iters
        )
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
