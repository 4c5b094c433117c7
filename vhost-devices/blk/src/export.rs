//! `--export`: one more disk served from the same process, written the way
//! qemu-storage-daemon's `--export` options are, as `key=value` pairs separated by commas:
//!
//! ```text
//! --export socket=/run/vm1-disk.sock,file=/images/vm1.raw,num-queues=2
//! --export socket=/run/vm2-disk.sock,file=/images/vm2.raw,read-only=on,direct=on
//! ```
//!
//! Keys: `socket` (also `addr.path`, required), `file` (required), `read-only`, `direct`
//! (`on`/`off`), `num-queues`, `queue-size`, `serial`. What an export does not say comes
//! from the command line's other options (`--num-queues`, `--direct`, `--aio`, ...). A comma
//! inside a value is written twice (`,,`), as QEMU does.

use std::path::PathBuf;

use crate::{BlkConfig, MAX_NUM_QUEUES, MAX_QUEUE_SIZE};

/// One `--export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// The socket the export listens on.
    pub socket: PathBuf,
    /// The image file or block device.
    pub file: PathBuf,
    /// `read-only=on|off`.
    pub read_only: Option<bool>,
    /// `direct=on|off`.
    pub direct: Option<bool>,
    /// `num-queues=N`.
    pub num_queues: Option<u16>,
    /// `queue-size=N`.
    pub queue_size: Option<u16>,
    /// `serial=S`.
    pub serial: Option<String>,
}

impl ExportSpec {
    /// `base` (the command line's other options) with what this export says.
    pub fn config(&self, base: &BlkConfig) -> BlkConfig {
        BlkConfig {
            path: self.file.clone(),
            read_only: self.read_only.unwrap_or(base.read_only),
            num_queues: self.num_queues.unwrap_or(base.num_queues),
            queue_size: self.queue_size.unwrap_or(base.queue_size),
            direct: self.direct.unwrap_or(base.direct),
            serial: self.serial.clone().unwrap_or_else(|| base.serial.clone()),
            ..base.clone()
        }
    }
}

impl std::str::FromStr for ExportSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut socket = None;
        let mut file = None;
        let mut spec = ExportSpec {
            socket: PathBuf::new(),
            file: PathBuf::new(),
            read_only: None,
            direct: None,
            num_queues: None,
            queue_size: None,
            serial: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for pair in split(s) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: expected key=value"))?;
            let canonical = match key {
                "addr.path" => "socket",
                "writable" => "read-only",
                k => k,
            };
            if !seen.insert(canonical.to_owned()) {
                return Err(format!("`{key}` given twice"));
            }
            if value.is_empty() {
                return Err(format!("`{key}=` needs a value"));
            }
            match key {
                "socket" | "addr.path" => socket = Some(PathBuf::from(value)),
                "file" => file = Some(PathBuf::from(value)),
                "read-only" => spec.read_only = Some(switch(key, value)?),
                "direct" => spec.direct = Some(switch(key, value)?),
                "num-queues" => {
                    spec.num_queues = Some(number(key, value, 1, u32::from(MAX_NUM_QUEUES))?)
                }
                "queue-size" => {
                    let n = number(key, value, 1, u32::from(MAX_QUEUE_SIZE))?;
                    if !n.is_power_of_two() {
                        return Err(format!("queue-size={n}: not a power of two"));
                    }
                    spec.queue_size = Some(n);
                }
                "serial" => spec.serial = Some(value.to_owned()),
                // qemu-storage-daemon's own keys, accepted where they mean what they say.
                "type" if value == "vhost-user-blk" => {}
                "addr.type" if value == "unix" => {}
                "writable" => spec.read_only = Some(!switch(key, value)?),
                _ => {
                    return Err(format!(
                        "unknown key `{key}` (keys: socket, file, read-only, direct, \
                         num-queues, queue-size, serial)"
                    ))
                }
            }
        }
        spec.socket = socket.ok_or("socket=PATH is missing")?;
        spec.file = file.ok_or("file=PATH is missing")?;
        Ok(spec)
    }
}

/// Refuses exports that would collide: two on one socket, or one image served writable by
/// one export and by another (two guests writing one image corrupt it; read-only sharing is
/// allowed).
pub fn check_distinct(exports: &[ExportSpec], default_read_only: bool) -> Result<(), String> {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
    for (i, a) in exports.iter().enumerate() {
        for b in &exports[i + 1..] {
            if a.socket == b.socket {
                return Err(format!("two exports on socket {}", a.socket.display()));
            }
            let writable = |e: &ExportSpec| !e.read_only.unwrap_or(default_read_only);
            if canonical(&a.file) == canonical(&b.file) && (writable(a) || writable(b)) {
                return Err(format!(
                    "{} is served by two exports and one of them may write it (add \
                     read-only=on to both to share it)",
                    a.file.display()
                ));
            }
        }
    }
    Ok(())
}

/// Splits at single commas; `,,` stands for a comma inside a value.
fn split(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                part.push(',');
            }
            ',' => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    parts.push(part);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

fn number(key: &str, value: &str, min: u32, max: u32) -> Result<u16, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("{key}={value}: expected a number from {min} to {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_with_every_key_parses_and_overrides_the_base() {
        let e: ExportSpec =
            "socket=/s,file=/i,read-only=on,direct=off,num-queues=4,queue-size=128,serial=x"
                .parse()
                .unwrap();
        assert_eq!(e.socket, PathBuf::from("/s"));
        assert_eq!(e.file, PathBuf::from("/i"));
        let mut base = BlkConfig::new("/other");
        base.direct = true;
        let c = e.config(&base);
        assert_eq!(c.path, PathBuf::from("/i"));
        assert!(c.read_only);
        assert!(!c.direct);
        assert_eq!((c.num_queues, c.queue_size), (4, 128));
        assert_eq!(c.serial, "x");
    }

    #[test]
    fn what_an_export_leaves_out_comes_from_the_base() {
        let e: ExportSpec = "socket=/s,file=/i".parse().unwrap();
        let mut base = BlkConfig::new("/other");
        base.num_queues = 2;
        base.read_only = true;
        let c = e.config(&base);
        assert_eq!((c.num_queues, c.read_only), (2, true));
    }

    #[test]
    fn qemu_storage_daemon_spellings_are_accepted() {
        let e: ExportSpec = "type=vhost-user-blk,addr.type=unix,addr.path=/s,file=/i,writable=off"
            .parse()
            .unwrap();
        assert_eq!(e.socket, PathBuf::from("/s"));
        assert_eq!(e.read_only, Some(true));
    }

    #[test]
    fn a_doubled_comma_is_a_comma_in_a_value() {
        let e: ExportSpec = "socket=/a,,b,file=/i".parse().unwrap();
        assert_eq!(e.socket, PathBuf::from("/a,b"));
    }

    #[test]
    fn bad_exports_are_refused_with_the_reason() {
        for (bad, why) in [
            ("file=/i", "socket"),
            ("socket=/s", "file"),
            ("socket=/s,file=/i,bogus=1", "unknown key"),
            ("socket=/s,file=/i,read-only=maybe", "on or off"),
            ("socket=/s,file=/i,num-queues=0", "num-queues"),
            ("socket=/s,file=/i,num-queues=999", "num-queues"),
            ("socket=/s,file=/i,queue-size=100", "power of two"),
            ("socket=/s,file=/i,queue-size", "key=value"),
            ("socket=/s,file=/i,socket=/t", "twice"),
            ("socket=/s,addr.path=/t,file=/i", "twice"),
            ("socket=/s,file=", "needs a value"),
        ] {
            let e = bad.parse::<ExportSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn colliding_exports_are_refused() {
        let e = |s: &str| s.parse::<ExportSpec>().unwrap();
        let same_socket = [e("socket=/s,file=/i"), e("socket=/s,file=/j")];
        assert!(check_distinct(&same_socket, false)
            .unwrap_err()
            .contains("socket"));
        let shared_rw = [e("socket=/s,file=/i"), e("socket=/t,file=/i,read-only=on")];
        assert!(check_distinct(&shared_rw, false)
            .unwrap_err()
            .contains("may write"));
        let shared_ro = [
            e("socket=/s,file=/i,read-only=on"),
            e("socket=/t,file=/i,read-only=on"),
        ];
        assert!(check_distinct(&shared_ro, false).is_ok());
        let default_ro = [e("socket=/s,file=/i"), e("socket=/t,file=/i")];
        assert!(
            check_distinct(&default_ro, true).is_ok(),
            "--read-only for all"
        );
    }
}
