//! RFC 7616 digest, computed by the tests themselves (SHA-256 and MD5, qop=auth, nc, cnonce),
//! and the users file the edge reads (`name sha256:<hex> md5:<hex>`).

use super::client::{Response, split_top_level};
use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest algorithm of RFC 7616 that the edge offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// As in `algorithm=`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// Lower-case hex of H(data).
    pub fn hex(self, data: &str) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Sha256 => Sha256::digest(data.as_bytes()).to_vec(),
            Algorithm::Md5 => Md5::digest(data.as_bytes()).to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// HA1 = H(user ":" realm ":" password), hex.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hex(&format!("{user}:{realm}:{password}"))
}

/// One line of a users file for `user` with both HA1 forms.
pub fn users_line(user: &str, realm: &str, password: &str) -> String {
    format!(
        "{user} sha256:{} md5:{}",
        ha1(Algorithm::Sha256, user, realm, password),
        ha1(Algorithm::Md5, user, realm, password)
    )
}

/// One `WWW-Authenticate: Digest ...` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// As sent (absent means MD5, RFC 7616 §3.3).
    pub algorithm: String,
    /// The qop options offered.
    pub qop: Vec<String>,
    pub stale: bool,
    /// Every parameter, in order (name lower case, value unquoted).
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn algorithm(&self) -> Option<Algorithm> {
        if self.algorithm.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else if self.algorithm.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else {
            None
        }
    }
}

/// The `name=value` pairs of a challenge or credentials (after the scheme).
pub fn auth_params(text: &str) -> Vec<(String, String)> {
    split_top_level(text)
        .into_iter()
        .filter_map(|part| {
            let (name, value) = part.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim().to_ascii_lowercase(), value.to_owned()))
        })
        .collect()
}

/// The Digest challenges of a 401 (`WWW-Authenticate`) in order.
pub fn challenges(response: &Response) -> Result<Vec<Challenge>, String> {
    let mut found = Vec::new();
    for (name, value) in &response.headers {
        if name != "www-authenticate" {
            continue;
        }
        let Some(rest) = value
            .strip_prefix("Digest ")
            .or_else(|| value.strip_prefix("digest "))
        else {
            return Err(format!("not a Digest challenge: {value:?}"));
        };
        let params = auth_params(rest);
        let get = |key: &str| {
            params
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
        };
        found.push(Challenge {
            realm: get("realm").ok_or_else(|| format!("challenge without realm: {value:?}"))?,
            nonce: get("nonce").ok_or_else(|| format!("challenge without nonce: {value:?}"))?,
            opaque: get("opaque"),
            algorithm: get("algorithm").unwrap_or_else(|| "MD5".to_owned()),
            qop: get("qop")
                .map(|qop| qop.split(',').map(|q| q.trim().to_owned()).collect())
                .unwrap_or_default(),
            stale: get("stale").is_some_and(|stale| stale.eq_ignore_ascii_case("true")),
            params,
        });
    }
    if found.is_empty() {
        return Err(format!(
            "no WWW-Authenticate in the {} answer:\n{response}",
            response.status
        ));
    }
    Ok(found)
}

/// The challenge for `algorithm` among those of `response`.
pub fn challenge_for(response: &Response, algorithm: Algorithm) -> Result<Challenge, String> {
    challenges(response)?
        .into_iter()
        .find(|challenge| challenge.algorithm() == Some(algorithm))
        .ok_or_else(|| {
            format!(
                "no {} challenge in the {} answer:\n{response}",
                algorithm.name(),
                response.status
            )
        })
}

/// An `Authorization` value answering `challenge` (qop=auth when offered).
pub fn authorization(
    challenge: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Result<String, String> {
    let algorithm = challenge
        .algorithm()
        .ok_or_else(|| format!("unknown algorithm {:?}", challenge.algorithm))?;
    let ha1 = ha1(algorithm, user, &challenge.realm, password);
    let ha2 = algorithm.hex(&format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let auth_qop = challenge.qop.iter().any(|qop| qop == "auth");
    let response = if auth_qop {
        algorithm.hex(&format!(
            "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
            challenge.nonce
        ))
    } else {
        algorithm.hex(&format!("{ha1}:{}:{ha2}", challenge.nonce))
    };
    let mut value = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
        challenge.realm,
        challenge.nonce,
        algorithm.name()
    );
    if auth_qop {
        value.push_str(&format!(", cnonce=\"{cnonce}\", qop=auth, nc={nc}"));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1's example (SHA-256 and MD5, qop=auth), computed with our code.
    #[test]
    fn rfc7616_example_responses() {
        let challenge = |algorithm: &str| Challenge {
            realm: "http-auth@example.org".to_owned(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".to_owned(),
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".to_owned()),
            algorithm: algorithm.to_owned(),
            qop: vec!["auth".to_owned()],
            stale: false,
            params: Vec::new(),
        };
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let md5 = authorization(
            &challenge("MD5"),
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            cnonce,
        )
        .expect("md5");
        assert!(
            md5.contains("response=\"8ca523f5e9506fed4657c9700eebdbec\""),
            "{md5}"
        );
        let sha = authorization(
            &challenge("SHA-256"),
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            cnonce,
        )
        .expect("sha256");
        assert!(
            sha.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{sha}"
        );
    }
}
