//! What `serve` tells the operator at start: every URL (web UI, REST API, OpenAPI, MQTT, the
//! device HTTP API, the device CA), the one-time admin key and the setup link, each with an
//! address a browser or device elsewhere can use, never a wildcard such as `0.0.0.0`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::app::Addrs;
use crate::config::{Config, PlainHttpAdmin};

/// True for names and addresses that only this machine can use.
fn is_local_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host` in a URL: IPv6 addresses in brackets.
fn url_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    }
}

/// The host others should use for a listener bound to `bound`: its address when it is bound to
/// one, else the first configured host name that is not this machine's own (`pki.hosts`, which
/// the server certificate carries), else `localhost`.
fn public_host(bound: SocketAddr, hosts: &[String]) -> String {
    if !bound.ip().is_unspecified() {
        return url_host(&bound.ip().to_string());
    }
    hosts
        .iter()
        .find(|h| !is_local_name(h))
        .map_or_else(|| "localhost".to_string(), |h| url_host(h))
}

/// The plain HTTP address a browser on this machine uses, when plain HTTP serves the UI to it.
fn local_http(addrs: &Addrs, config: &Config) -> Option<String> {
    let ip = addrs.http.ip();
    let local = ip.is_unspecified() || ip.is_loopback();
    (config.http.admin != PlainHttpAdmin::None && local).then(|| {
        let host = if ip.is_ipv6() && !ip.is_unspecified() {
            "[::1]"
        } else {
            "127.0.0.1"
        };
        format!("http://{host}:{}", addrs.http.port())
    })
}

/// The lines of the start banner.
pub fn urls(addrs: &Addrs, config: &Config, data_dir: &Path) -> Vec<String> {
    let hosts = &config.pki.hosts;
    let http = format!(
        "http://{}:{}",
        public_host(addrs.http, hosts),
        addrs.http.port()
    );
    let https = addrs
        .https
        .map(|a| format!("https://{}:{}", public_host(a, hosts), a.port()));
    let local = local_http(addrs, config);
    let mut out = vec!["Corral is running.".to_string()];
    let mut row = |what: &str, text: String| out.push(format!("  {what:<14}{text}"));
    // The UI and the admin API: HTTPS for everyone, plain HTTP as `http.admin` allows.
    let ui = match (&https, config.http.admin) {
        (Some(h), _) => Some(h.clone()),
        (None, PlainHttpAdmin::Any) => Some(http.clone()),
        _ => None,
    };
    if let Some(ui) = &ui {
        row("Web UI", format!("{ui}/"));
    }
    if let Some(l) = local.as_ref().filter(|l| Some(*l) != ui.as_ref()) {
        row(
            if ui.is_some() { "" } else { "Web UI" },
            format!("{l}/  (from this machine, no certificate needed)"),
        );
    }
    if let Some(api) = ui.as_ref().or(local.as_ref()) {
        row("REST API", format!("{api}/api/v1"));
        row("API reference", format!("{api}/api/docs"));
        row("OpenAPI", format!("{api}/api/v1/openapi.json"));
    }
    row(
        "MQTT (TLS)",
        format!(
            "mqtts://{}:{}",
            public_host(addrs.mqtt_tls, hosts),
            addrs.mqtt_tls.port()
        ),
    );
    if let Some(p) = addrs.mqtt_plain {
        row(
            "MQTT (plain)",
            format!("mqtt://{}:{}", public_host(p, hosts), p.port()),
        );
    }
    row("HTTP devices", format!("{http}/api/v1/{{token}}/telemetry"));
    row(
        "Device CA",
        format!(
            "{} (also {http}/api/v1/ca.pem)",
            data_dir.join("pki/ca.pem").display()
        ),
    );
    if https.is_some() {
        out.push(
            "  HTTPS uses a certificate from Corral's own CA: a browser warns until that CA is \
             trusted (import the Device CA file above as a certificate authority)."
                .into(),
        );
    }
    if hosts.iter().all(|h| is_local_name(h)) {
        out.push(
            "  Only this machine's names are in pki.hosts: set it to the names or addresses \
             others use to reach this server (CORRAL_PKI__HOSTS='[\"corral.lan\", \"10.0.0.5\"]') \
             and restart, so devices and browsers elsewhere can verify it."
                .into(),
        );
    }
    out
}

/// The links that open the first-admin setup page with `token`.
pub fn setup_links(addrs: &Addrs, config: &Config, token: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = addrs.https {
        out.push(format!(
            "https://{}:{}/#/setup?token={token}",
            public_host(a, &config.pki.hosts),
            a.port()
        ));
    } else if config.http.admin == PlainHttpAdmin::Any {
        out.push(format!(
            "http://{}:{}/#/setup?token={token}",
            public_host(addrs.http, &config.pki.hosts),
            addrs.http.port()
        ));
    }
    if let Some(l) = local_http(addrs, config) {
        let link = format!("{l}/#/setup?token={token}");
        if !out.contains(&link) {
            out.push(format!("{link}  (from this machine)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ip: &str) -> Addrs {
        let at = |port| SocketAddr::new(ip.parse().expect("ip"), port);
        Addrs {
            mqtt_tls: at(8883),
            mqtt_plain: None,
            http: at(8080),
            https: Some(at(8443)),
        }
    }

    fn config(hosts: &[&str]) -> Config {
        let mut c = Config::default();
        c.pki.hosts = hosts.iter().map(|h| h.to_string()).collect();
        c
    }

    #[test]
    fn links_name_a_host_a_browser_can_open_never_a_wildcard() {
        let c = config(&["localhost", "corral.lan", "10.0.0.5"]);
        let links = setup_links(&addrs("0.0.0.0"), &c, "T");
        assert_eq!(
            links,
            vec![
                "https://corral.lan:8443/#/setup?token=T".to_string(),
                "http://127.0.0.1:8080/#/setup?token=T  (from this machine)".into(),
            ]
        );
        let lines = urls(&addrs("0.0.0.0"), &c, Path::new("/data")).join("\n");
        assert!(!lines.contains("0.0.0.0"), "{lines}");
        assert!(lines.contains("mqtts://corral.lan:8883"), "{lines}");
        assert!(
            lines.contains("https://corral.lan:8443/api/v1/openapi.json"),
            "{lines}"
        );
        assert!(!lines.contains("pki.hosts"), "{lines}");
    }

    #[test]
    fn default_hosts_give_localhost_and_say_how_to_reach_the_server_from_elsewhere() {
        let c = config(&["localhost", "127.0.0.1", "::1"]);
        let links = setup_links(&addrs("::"), &c, "T");
        assert_eq!(links[0], "https://localhost:8443/#/setup?token=T");
        assert!(
            urls(&addrs("::"), &c, Path::new("/d"))
                .join("\n")
                .contains("pki.hosts")
        );
        // Bound to one address: that address.
        let links = setup_links(&addrs("10.1.2.3"), &c, "T");
        assert_eq!(
            links,
            vec!["https://10.1.2.3:8443/#/setup?token=T".to_string()]
        );
        let v6 = setup_links(&addrs("fd00::5"), &c, "T");
        assert_eq!(
            v6,
            vec!["https://[fd00::5]:8443/#/setup?token=T".to_string()]
        );
    }

    #[test]
    fn without_https_the_ui_is_offered_where_plain_http_serves_it() {
        let mut c = config(&["corral.lan"]);
        let mut a = addrs("0.0.0.0");
        a.https = None;
        assert_eq!(
            setup_links(&a, &c, "T"),
            vec!["http://127.0.0.1:8080/#/setup?token=T  (from this machine)".to_string()]
        );
        c.http.admin = PlainHttpAdmin::Any;
        assert_eq!(
            setup_links(&a, &c, "T")[0],
            "http://corral.lan:8080/#/setup?token=T"
        );
        c.http.admin = PlainHttpAdmin::None;
        assert!(setup_links(&a, &c, "T").is_empty());
    }
}
