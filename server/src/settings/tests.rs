//! `resolve` against tables of flags and files; the file system is a map.

use std::collections::HashMap;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    s: Settings,
}

fn flags(args: &[&str]) -> Settings {
    let argv = std::iter::once("tunnel-server").chain(args.iter().copied());
    Flags::try_parse_from(argv).unwrap().s
}

fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> std::io::Result<String> {
    let map: HashMap<PathBuf, String> = entries
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    move |p: &Path| {
        map.get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn resolve_with(args: &[&str], file: Option<&str>, fs: &[(&str, &str)]) -> Result<Config, String> {
    let file = file.map(|t| Loaded::parse(Path::new("server.toml"), t.to_owned()).unwrap());
    resolve(flags(args), file, &files(fs))
}

#[test]
fn flags_win_over_the_file_and_the_file_over_the_defaults() {
    let file = "domain = \"file.example\"\nmax_clients = 7\ntokens = [\"from-the-file\"]\n";
    // (flags, expected domain, expected max_clients, expected tokens)
    let cases: [(&[&str], &str, usize, &[&str]); 4] = [
        (&[], "file.example", 7, &["from-the-file"]),
        (
            &["--domain", "flag.example"],
            "flag.example",
            7,
            &["from-the-file"],
        ),
        (
            &["--max-clients", "9"],
            "file.example",
            9,
            &["from-the-file"],
        ),
        // A list given as flags replaces the file's.
        (
            &["--token", "a", "--token", "b"],
            "file.example",
            7,
            &["a", "b"],
        ),
    ];
    for (args, domain, max_clients, tokens) in cases {
        let c = resolve_with(args, Some(file), &[]).unwrap();
        assert_eq!(c.domain, domain, "{args:?}");
        assert_eq!(c.max_clients, max_clients, "{args:?}");
        let got: Vec<&str> = c.tokens.iter().map(|t| t.expose()).collect();
        assert_eq!(got, tokens, "{args:?}");
    }
    let d = resolve_with(&[], None, &[]).unwrap();
    let defaults = Config::default();
    assert_eq!(d.domain, defaults.domain);
    assert_eq!(d.name_grace, defaults.name_grace);
    assert_eq!(d.token_limits.sessions, defaults.token_limits.sessions);
    assert!(d.acme.is_none() && d.tcp_ports.is_none());
}

#[test]
fn values_parse_themselves_in_flags_and_in_the_file() {
    let c = resolve_with(
        &["--tcp-ports", "40000-40099", "--acme", "--acme-challenge", "http-01"],
        Some("udp_ports = \"50000-50009\"\nallow_domains = [\"*.example.org\"]\nlog_format = \"json\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.tcp_ports, Some(40000..=40099));
    assert_eq!(c.udp_ports, Some(50000..=50009));
    assert_eq!(c.allow_domains[0].pattern, "*.example.org");
    assert_eq!(c.log_format, tunnel_lib::logging::LogFormat::Json);
    assert_eq!(c.acme.unwrap().challenge, Challenge::Http01);

    for bad in [
        &["--tcp-ports", "9-1"][..],
        &["--acme-challenge", "dns-01"],
        &["--allow-domain", "x=*.example.com"],
        &["--log-format", "xml"],
        &["--congestion", "fast"],
    ] {
        let argv = std::iter::once("tunnel-server").chain(bad.iter().copied());
        let e = Flags::try_parse_from(argv).err().unwrap().to_string();
        assert!(e.contains(bad[0]), "{bad:?}: the error names the flag: {e}");
    }
}

#[test]
fn file_errors_name_the_key_and_the_line() {
    let cases = [
        (
            "domain = \"a.example\"\n\nmax_visitor = 5\n",
            "server.toml line 3: max_visitor",
        ),
        ("http = \"nowhere\"\n", "server.toml line 1: http"),
        ("\n\ntcp_ports = \"9-1\"\n", "server.toml line 3: tcp_ports"),
        (
            "acme_challenge = \"dns-01\"\n",
            "server.toml line 1: acme_challenge",
        ),
        (
            "[tuning]\ncongestion = \"fast\"\n",
            "server.toml line 2: congestion",
        ),
        (
            "allow_domains = [\"not a host\"]\n",
            "server.toml line 1: allow_domains",
        ),
    ];
    for (text, expect) in cases {
        let e = Loaded::parse(Path::new("server.toml"), text.into())
            .err()
            .unwrap();
        assert!(e.starts_with(expect), "{text:?} should say {expect:?}: {e}");
    }
    let e = Loaded::parse(Path::new("server.toml"), "max_visitor = 1\n".into())
        .err()
        .unwrap();
    assert!(e.contains("max_visitors"), "lists the known keys: {e}");
}

#[test]
fn token_tables_add_tokens_with_their_own_rights() {
    let file = "tcp_ports = \"40000-40099\"\ntokens = [\"first\"]\n\
                [[token]]\nsecret = \"alice\"\ntcp_ports = \"40010-40019\"\ndomains = [\"*.alice.example\"]\nnames = [\"alice-*\", \"API\"]\nudp_ports = \"none\"\n\
                [[token]]\nsecret_file = \"/run/bob\"\n";
    let c = resolve_with(&[], Some(file), &[("/run/bob", "bob\n")]).unwrap();
    let tokens: Vec<&str> = c.tokens.iter().map(|t| t.expose()).collect();
    assert_eq!(tokens, ["first", "alice", "bob"]);
    assert_eq!(c.allow_domains[0].token, Some(1));
    assert_eq!(c.allow_domains[0].pattern, "*.alice.example");
    let names: Vec<(usize, &str)> = c
        .token_names
        .iter()
        .map(|r| (r.token, r.pattern.as_str()))
        .collect();
    assert_eq!(names, [(1, "alice-*"), (1, "api")]);
    assert_eq!(c.token_ports[0].tcp, Some(40010..=40019));
    assert!(c.token_ports[0].no_udp && !c.token_ports[0].no_tcp);
    assert!(c.token_ports[1].tcp.is_none());

    let cases = [
        (
            "tcp_ports = \"40000-40099\"\n[[token]]\nsecret = \"x\"\ntcp_ports = \"39000-39001\"\n",
            "server.toml line 4: token.tcp_ports",
        ),
        (
            "[[token]]\nsecret = \"x\"\nnames = [\"a.b\"]\n",
            "server.toml line 3: token.names",
        ),
        (
            "[[token]]\nsecret = \"x\"\nsecret_file = \"/y\"\n",
            "give exactly one of secret or secret_file",
        ),
        (
            "[[token]]\nsecret_file = \"/missing\"\n",
            "token[0].secret_file /missing",
        ),
    ];
    for (text, expect) in cases {
        let e = resolve_with(&[], Some(text), &[]).err().unwrap();
        assert!(e.contains(expect), "{text:?} should say {expect:?}: {e}");
    }
    let e = Loaded::parse(
        Path::new("server.toml"),
        "[[token]]\nsecret = \"x\"\nports = 1\n".into(),
    )
    .err()
    .unwrap();
    assert!(e.starts_with("server.toml line 3"), "{e}");
}

#[test]
fn token_files_are_read_and_missing_ones_named() {
    let c = resolve_with(
        &["--token-file", "/etc/t"],
        None,
        &[("/etc/t", "# team\n a \n\nb\n")],
    )
    .unwrap();
    let tokens: Vec<&str> = c.tokens.iter().map(|t| t.expose()).collect();
    assert_eq!(tokens, ["a", "b"]);
    let c = resolve_with(
        &[],
        Some("tokens_file = \"/etc/t\"\n"),
        &[("/etc/t", "c\n")],
    )
    .unwrap();
    assert_eq!(c.tokens.len(), 1);
    let e = resolve_with(&["--token-file", "/nope"], None, &[])
        .err()
        .unwrap();
    assert!(e.starts_with("token file /nope"), "{e}");
}

#[test]
fn acme_settings_need_acme() {
    let e = resolve_with(&["--acme-email", "a@b.example"], None, &[])
        .err()
        .unwrap();
    assert!(e.contains("add --acme"), "{e}");
    let c = resolve_with(&["--acme", "--acme-staging"], None, &[]).unwrap();
    assert_eq!(c.acme.unwrap().directory, crate::acme::LETS_ENCRYPT_STAGING);
    let c = resolve_with(
        &["--acme"],
        Some("acme_directory = \"https://ca.test/dir\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.acme.unwrap().directory, "https://ca.test/dir");
}

#[test]
fn tuning_levers_are_settings() {
    let c = resolve_with(
        &["--congestion", "cubic"],
        Some("[tuning]\ncongestion = \"newreno\"\nworker_threads = 2\nmtu_upper = 8952\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.tuning.congestion,
        Some(tunnel_lib::tuning::Congestion::Cubic)
    );
    assert_eq!(c.tuning.worker_threads(), 2);
    assert_eq!(c.tuning.mtu_upper, Some(8952));
}
