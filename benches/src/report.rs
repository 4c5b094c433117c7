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

/// Prints, for each `(ours, reference)` pair of `group`, both medians, the time ratio
/// ours/reference and the rate of each (per second).
pub fn print_ratios(group: &str, pairs: &[(&str, &str)]) {
    println!("\n== {group}: medians ==");
    println!(
        "{:<34} {:>10} {:>12} {:>34} {:>10} {:>12} {:>8}",
        "ours", "ns", "per s", "reference", "ns", "per s", "ratio"
    );
    for (ours, reference) in pairs {
        match (median_ns(group, ours), median_ns(group, reference)) {
            (Some(a), Some(b)) => println!(
                "{ours:<34} {a:>10.0} {:>12.0} {reference:>34} {b:>10.0} {:>12.0} {:>7.3}x",
                1e9 / a,
                1e9 / b,
                a / b
            ),
            _ => println!("{ours:<34} (no result for this pair in {group})"),
        }
    }
    println!("ratio = time ours / time reference (1.000 = as fast; 1.100 = 10% slower)");
}

/// Times `ours` and `reference` in alternation — `rounds` rounds of `iters` calls each,
/// the order flipped every round — and prints the median time per call of each and the
/// median of the per-round ratios. Alternating in short rounds makes the ratio robust to
/// load that comes and goes on a shared machine, which sequential criterion runs are not.
/// Returns the median ratio (time ours / time reference).
pub fn paired(
    name: &str,
    rounds: usize,
    iters: u64,
    mut ours: impl FnMut(),
    mut reference: impl FnMut(),
) -> f64 {
    let mut time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_nanos() as f64 / iters as f64
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
    let (ma, mb, mr) = (median(&mut a), median(&mut b), median(&mut r));
    println!(
        "paired {name}: ours {ma:.0} ns, reference {mb:.0} ns, ratio {mr:.3}x \
         (median of {} alternating rounds of {iters})",
        rounds.max(1)
    );
    mr
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
