//! Kamailio 5.6 (the Debian package) as the reference registrar of `sv-bench-register`: the
//! db_text database a run generates (the same users and HA1s as sipveil's users file) and the
//! command line that starts one of the configurations in `loadtest/kamailio/` in the foreground.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How Kamailio's authenticated domain finds a user's HA1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KamailioAuth {
    /// `auth_db` + `www_authorize`: a db_text query per REGISTER. db_text scans its table row by
    /// row, so the cost grows with the number of users.
    AuthDb,
    /// The same table loaded once into an `htable` at start, `pv_www_authenticate` with the HA1:
    /// a hash lookup per REGISTER (what a tuned in-memory Kamailio deployment does). Loading is
    /// slow (db_text: ~8 s for 50 000 users, ~48 s for 192 000).
    Htable,
    /// The bench's passwords are `md5hex("svb:" + user)` ([`crate::register::bench_password`]):
    /// the script derives the password per REGISTER and `pv_www_authenticate` computes the HA1
    /// (two MD5s in place of a lookup, nothing to load at start).
    Derived,
}

impl KamailioAuth {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            KamailioAuth::AuthDb => "auth_db",
            KamailioAuth::Htable => "htable",
            KamailioAuth::Derived => "derived",
        }
    }
}

impl std::str::FromStr for KamailioAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auth_db" => Ok(KamailioAuth::AuthDb),
            "htable" => Ok(KamailioAuth::Htable),
            "derived" => Ok(KamailioAuth::Derived),
            other => Err(format!("{other:?}: expected auth_db, htable or derived")),
        }
    }
}

/// One subscriber: user name, domain (= realm) and the MD5 HA1 as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber<'a> {
    pub name: &'a str,
    pub domain: &'a str,
    pub password: &'a str,
    pub ha1_md5_hex: &'a str,
}

/// The db_text tables: `subscriber` (for auth_db), `ha1` (for the htable variant, columns as the
/// htable module reads them) and `version`. Returns (file name, contents).
#[must_use]
pub fn db_text_tables<'a>(
    subscribers: impl IntoIterator<Item = Subscriber<'a>>,
) -> Vec<(&'static str, String)> {
    let mut sub = String::from(
        "id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string)\n",
    );
    let mut ht = String::from(
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n",
    );
    for (i, s) in subscribers.into_iter().enumerate() {
        let id = i + 1;
        let _ = writeln!(
            sub,
            "{id}:{}:{}:{}:{}:{}",
            s.name, s.domain, s.password, s.ha1_md5_hex, s.ha1_md5_hex
        );
        let _ = writeln!(ht, "{id}:{}:0:0:{}:0", s.name, s.ha1_md5_hex);
    }
    let version = "table_name(string) table_version(int)\nsubscriber:7\nha1:2\nlocation:9\n";
    vec![
        ("subscriber", sub),
        ("ha1", ht),
        ("version", version.to_owned()),
    ]
}

/// How to start Kamailio for one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct KamailioRun {
    pub binary: PathBuf,
    /// `loadtest/kamailio/open.cfg` or `auth.cfg`.
    pub config: PathBuf,
    pub netns: String,
    pub listen: SocketAddrV4,
    /// UDP worker processes (`-n`).
    pub children: u32,
    /// Shared / private memory, MB (`-m`, `-M`).
    pub shm_mb: u32,
    pub pkg_mb: u32,
    /// The db_text directory (authenticated configuration).
    pub db_dir: Option<PathBuf>,
    pub auth: KamailioAuth,
}

impl KamailioRun {
    /// `ip netns exec NS kamailio -DD -E -f CFG -n N -l udp:ADDR -m SHM -M PKG [-A ...]`:
    /// foreground, logging to stderr, `children` UDP workers.
    #[must_use]
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.binary)
            .args(["-DD", "-E", "-f"])
            .arg(&self.config)
            .args(["-n", &self.children.to_string()])
            .args(["-l", &format!("udp:{}", self.listen)])
            .args(["-m", &self.shm_mb.to_string()])
            .args(["-M", &self.pkg_mb.to_string()]);
        if let Some(db) = &self.db_dir {
            cmd.arg("-A")
                .arg(format!("DBURL=\"text://{}\"", db.display()));
        }
        match self.auth {
            KamailioAuth::AuthDb => {}
            KamailioAuth::Htable => {
                cmd.args(["-A", "BENCH_AUTH_HTABLE"]);
            }
            KamailioAuth::Derived => {
                cmd.args(["-A", "BENCH_AUTH_DERIVED"]);
            }
        }
        cmd
    }
}

/// The configuration file for a domain kind in `dir` (`loadtest/kamailio`).
#[must_use]
pub fn config_for(dir: &Path, authenticated: bool) -> PathBuf {
    dir.join(if authenticated {
        "auth.cfg"
    } else {
        "open.cfg"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_headers_and_rows() {
        let t = db_text_tables([Subscriber {
            name: "u1",
            domain: "auth.lab",
            password: "pw",
            ha1_md5_hex: "00ff",
        }]);
        let get = |n: &str| {
            t.iter()
                .find(|(name, _)| *name == n)
                .map(|(_, c)| c.clone())
                .unwrap_or_default()
        };
        assert!(get("subscriber").ends_with("\n1:u1:auth.lab:pw:00ff:00ff\n"));
        assert!(get("ha1").ends_with("\n1:u1:0:0:00ff:0\n"));
        assert!(get("version").contains("subscriber:7"));
    }

    #[test]
    fn command_line() {
        let run = KamailioRun {
            binary: "kamailio".into(),
            config: "auth.cfg".into(),
            netns: "sv-edge".into(),
            listen: "198.18.1.1:5060".parse().unwrap_or_else(|e| panic!("{e}")),
            children: 2,
            shm_mb: 1024,
            pkg_mb: 64,
            db_dir: Some("/tmp/db".into()),
            auth: KamailioAuth::Htable,
        };
        let args: Vec<String> = run
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-n 2 -l udp:198.18.1.1:5060 -m 1024 -M 64"));
        assert!(joined.contains("DBURL=\"text:///tmp/db\""));
        assert!(joined.contains("-A BENCH_AUTH_HTABLE"));
        assert_eq!("auth_db".parse(), Ok(KamailioAuth::AuthDb));
        assert_eq!("derived".parse(), Ok(KamailioAuth::Derived));
        assert!("x".parse::<KamailioAuth>().is_err());
    }
}
