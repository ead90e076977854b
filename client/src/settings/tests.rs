//! `resolve` against tables of command lines and files; the file system is
//! a map.

use std::collections::HashMap;

use super::*;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("tunnel-client").chain(args.iter().copied())).unwrap()
}

fn run(
    args: &[&str],
    file: Option<&str>,
    fs: &[(&str, &str)],
) -> Result<(Config, Ui), ClientError> {
    let map: HashMap<PathBuf, String> = fs.iter().map(|(p, t)| (p.into(), t.to_string())).collect();
    let read = move |p: &Path| {
        map.get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    let path = PathBuf::from("client.toml");
    let file = file.map(|t| Loaded::parse(&path, t.to_owned()).unwrap());
    match resolve(cli(args), Some(path), file, false, &read, &|_| None)? {
        Job::Run(c, ui) => Ok((*c, ui)),
        Job::Login { .. } => panic!("not a login"),
    }
}

#[test]
fn flags_win_over_the_file_before_or_after_the_command() {
    let file = "server = \"file:1\"\ntoken = \"file-token\"\nlocal_timeout = 3\nno_screen = true\n";
    // (command line, expected server, expected token)
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--expose", "80"], "file:1", "file-token"),
        (
            &["--server", "flag:2", "http", "80"],
            "flag:2",
            "file-token",
        ),
        (
            &["http", "80", "--server", "flag:3", "--token", "t"],
            "flag:3",
            "t",
        ),
        (&["tcp", "22", "--token", "u"], "file:1", "u"),
    ];
    for (args, server, token) in cases {
        let (c, _) = run(args, Some(file), &[]).unwrap();
        assert_eq!(c.server, server, "{args:?}");
        assert_eq!(
            c.token.as_ref().map(|t| t.expose()),
            Some(token),
            "{args:?}"
        );
        assert_eq!(c.local.connect_timeout, Duration::from_secs(3), "{args:?}");
    }
    let (c, ui) = run(&["--expose", "8080"], None, &[]).unwrap();
    assert_eq!(c.server, Config::default().server);
    assert_eq!(c.tunnels[0].local, "localhost:8080");
    assert!(c.give_up_after.is_none() && c.token.is_none());
    assert!(
        ui.inspect.is_none(),
        "not a terminal: no inspector unless asked"
    );
}

#[test]
fn the_token_file_is_read_when_no_token_is_given() {
    let (c, _) = run(
        &["--expose", "1"],
        Some("token_file = \"/t\"\n"),
        &[("/t", " s3cret \n")],
    )
    .unwrap();
    assert_eq!(c.token.unwrap().expose(), "s3cret");
    let (c, _) = run(
        &["--expose", "1", "--token", "x"],
        Some("token_file = \"/nope\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.token.unwrap().expose(), "x");
    let e = run(&["--expose", "1", "--token-file", "/nope"], None, &[])
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("token_file /nope"), "{e}");
    assert_eq!(e.exit_code(), 78);
}

#[test]
fn what_to_expose_comes_from_one_place() {
    let cases: [(&[&str], &str); 4] = [
        (&[], "nothing to expose"),
        (&["--expose", "1", "http", "2"], "pass one"),
        (&["--expose", "eighty"], "expected a port (8080), HOST:PORT"),
        (
            &["start", "--subdomain", "x"],
            "--subdomain is for one tunnel",
        ),
    ];
    for (args, expect) in cases {
        let e = run(args, Some("[tunnels.web]\nlocal = \"1\"\n"), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains(expect), "{args:?}: {e}");
        assert_eq!(e.exit_code(), 78, "{args:?}");
    }
    let (c, _) = run(
        &["start"],
        Some("[tunnels.a]\nlocal = \"1\"\n[tunnels.b]\nkind = \"udp\"\nlocal = \"2\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.tunnels.len(), 2);
    let (c, _) = run(
        &[
            "http",
            "127.0.0.1:3000",
            "--basic-auth",
            "u:p",
            "--subdomain",
            "app",
        ],
        None,
        &[],
    )
    .unwrap();
    assert_eq!(c.tunnels[0].subdomain.as_deref(), Some("app"));
    assert_eq!(c.tunnels[0].policy.basic_auth.len(), 1);
}

#[test]
fn settings_from_the_file_reach_the_ui_and_the_levers() {
    let file =
        "inspect = \"127.0.0.1:0\"\nlog_format = \"json\"\ngive_up_after = 5\nudp_idle = 0\n\
                [tuning]\ncongestion = \"cubic\"\n";
    let (c, ui) = run(&["--expose", "1"], Some(file), &[]).unwrap();
    assert!(ui.inspect.is_some());
    assert_eq!(ui.log_format, LogFormat::Json);
    assert_eq!(c.give_up_after, Some(Duration::from_secs(5)));
    assert_eq!(c.udp_idle, Duration::from_secs(1), "at least a second");
    assert_eq!(
        c.tuning.congestion,
        Some(tunnel_lib::tuning::Congestion::Cubic)
    );
    let e = run(&["--expose", "1", "--inspect", "0.0.0.0:4040"], None, &[])
        .err()
        .unwrap();
    assert!(e.to_string().contains("--inspect-auth"), "{e}");
    let e = Loaded::parse(Path::new("client.toml"), "\nservr = \"x\"\n".into())
        .err()
        .unwrap();
    assert!(e.starts_with("client.toml line 2: servr: "), "{e}");
}

#[test]
fn login_writes_the_connection_and_keeps_the_rest() {
    let path = PathBuf::from("client.toml");
    let file = Loaded::parse(&path, "[tunnels.web]\nlocal = \"1\"\n".into()).unwrap();
    let job = resolve(
        cli(&["login", "--server", "s:1", "--token", "t"]),
        Some(path.clone()),
        Some(file),
        false,
        &|_| unreachable!(),
        &|_| None,
    )
    .unwrap();
    let Job::Login { path: p, text } = job else {
        panic!("a login")
    };
    assert_eq!(p, path);
    assert!(
        text.contains("server = \"s:1\"") && text.contains("[tunnels.web]"),
        "{text}"
    );
    let e = resolve(
        cli(&["login", "--server", "s:1"]),
        Some(path),
        None,
        false,
        &|_| unreachable!(),
        &|_| None,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("--token TOKEN"), "{e}");
}

#[test]
fn errors_have_documented_exit_codes() {
    let codes = [
        (ClientError::Unauthorized(String::new()), 77),
        (ClientError::VersionMismatch(String::new()), 76),
        (ClientError::NameTaken(String::new()), 75),
        (ClientError::Refused(String::new()), 75),
        (ClientError::InvalidName(String::new()), 65),
        (ClientError::Config(String::new()), 78),
        (ClientError::Unreachable(String::new()), 69),
    ];
    for (e, code) in codes {
        assert_eq!(e.exit_code(), code, "{e:?}");
    }
}

#[test]
fn a_proxy_from_the_environment_means_tcp_unless_quic_is_asked() {
    let path = PathBuf::from("client.toml");
    let env = |name: &str| (name == "HTTPS_PROXY").then(|| "http://proxy.corp:3128".to_string());
    let run = |args: &[&str]| match resolve(
        cli(args),
        Some(path.clone()),
        None,
        false,
        &|_| unreachable!(),
        &env,
    )
    .unwrap()
    {
        Job::Run(c, _) => *c,
        Job::Login { .. } => panic!("not a login"),
    };
    let c = run(&["--expose", "1", "--server", "t.example"]);
    assert_eq!(
        c.proxy.as_ref().map(|p| p.to_string()).as_deref(),
        Some("http://proxy.corp:3128")
    );
    assert_eq!(
        c.transport,
        crate::Transport::Tcp,
        "QUIC is not tried behind a proxy"
    );
    let c = run(&[
        "--expose",
        "1",
        "--server",
        "t.example",
        "--transport",
        "quic",
    ]);
    assert_eq!(c.transport, crate::Transport::Quic, "unless asked");
    let c = run(&["--expose", "1", "--proxy", "socks5://s:1080"]);
    assert_eq!(
        c.proxy.unwrap().to_string(),
        "socks5://s:1080",
        "--proxy wins"
    );
    let no_proxy = |name: &str| match name {
        "HTTPS_PROXY" => Some("http://proxy.corp:3128".to_string()),
        "NO_PROXY" => Some("localhost".to_string()),
        _ => None,
    };
    let c = match resolve(
        cli(&["--expose", "1"]),
        Some(path.clone()),
        None,
        false,
        &|_| unreachable!(),
        &no_proxy,
    )
    .unwrap()
    {
        Job::Run(c, _) => *c,
        Job::Login { .. } => panic!(),
    };
    assert!(c.proxy.is_none() && c.transport == crate::Transport::Auto);
}

/// `https://` local services: the forms, the port 443 default, the Host
/// and SNI from the local name, and only for http tunnels.
#[test]
fn an_https_local_service_is_parsed_and_checked() {
    for (given, want) in [
        ("https://localhost:8443", "https://localhost:8443"),
        ("https://localhost:8443/", "https://localhost:8443"),
        ("https://dev.test", "https://dev.test:443"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("http://localhost:3000", "localhost:3000"),
        ("3000", "localhost:3000"),
    ] {
        assert_eq!(local_target(given).unwrap(), want, "{given}");
    }
    for bad in ["https://", "https://:1", "https://a/b:1", "ftp://a:1"] {
        assert!(local_target(bad).is_err(), "{bad}");
    }
    let (c, _) = run(&["http", "https://localhost:8443"], None, &[]).unwrap();
    let t = &c.tunnels[0];
    assert!(t.https());
    assert_eq!(t.address(), "localhost:8443");
    assert_eq!(t.policy.host_header, "rewrite");
    let (c, _) = run(
        &[
            "http",
            "https://localhost:8443",
            "--host-header",
            "app.test",
        ],
        None,
        &[],
    )
    .unwrap();
    assert_eq!(c.tunnels[0].policy.host_header, "app.test");
    let e = run(&["tls", "https://localhost:8443"], None, &[])
        .err()
        .unwrap();
    assert!(e.to_string().contains("is for http tunnels"), "{e}");
    let e = run(
        &["start"],
        Some("[tunnels.a]\nkind = \"tcp\"\nlocal = \"https://localhost:1\"\n"),
        &[],
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("is for http tunnels"), "{e}");
}
