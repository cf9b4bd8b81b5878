//! The `weir` binary as a user runs it.

use std::process::Command;

fn weir(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_file_line_column_and_key_of_a_misspelt_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\nbackends = [{ address = \"127.0.0.1:1\" }]\nbalancr = { plugin = \"round-robin\" }\n",
    )
    .unwrap();
    let (ok, _, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    let want = format!("{}:7:1: pool.web.balancr: unknown field `balancr`", path.display());
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn check_accepts_every_example_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // A config naming files the example makes in its first lines is checked in a
            // directory of its own, after running that command there.
            let made = make_example_files(&path);
            let path = made.as_ref().map_or(path.clone(), |dir| dir.path().join(path.file_name().unwrap()));
            let (ok, stdout, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok"), "{stdout}");
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(checked, ["basic.toml", "l4.toml", "tls-h2.toml", "tls-passthrough.toml"]);
}

/// For an example whose first lines make a certificate (`#   openssl req ... -keyout
/// examples/X.key -out examples/X.pem`): a directory with a copy of the example and the
/// files that command makes, made by running it there.
fn make_example_files(example: &std::path::Path) -> Option<tempfile::TempDir> {
    let text = std::fs::read_to_string(example).unwrap();
    let command = text.lines().find_map(|l| l.strip_prefix("#   openssl req "))?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example, dir.path().join(example.file_name().unwrap())).unwrap();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    let out = std::process::Command::new("openssl")
        .arg("req")
        .args(command.split_whitespace())
        .current_dir(dir.path())
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(out.status.success(), "{}: {}", example.display(), String::from_utf8_lossy(&out.stderr));
    // The command writes into examples/, beside the config.
    for entry in std::fs::read_dir(dir.path().join("examples")).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    Some(dir)
}

#[test]
fn inspect_reports_the_world_of_a_pack_plugin() {
    let (ok, stdout, stderr) = weir(&["plugin", "inspect", "round-robin"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("world:     balancer-plugin"), "{stdout}");
    assert!(stdout.contains("weir:plugin/pool@0.1.0"), "{stdout}");
}

/// Writes `text` as `weir.toml` in a new directory and runs `weir check` on it.
fn check(text: &str) -> (bool, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, stdout, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
    (ok, stdout, stderr.replace(&path.display().to_string(), "weir.toml"), dir)
}

#[test]
fn check_blames_a_refused_plugin_config_on_its_key_and_line() {
    let head = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
        crate::support::cache_dir().display().to_string()
    );
    // The header form: the error is at the `[pool.p.balancer.config]` table (line 12).
    let text =
        format!("{head}[pool.p.balancer]\nplugin = \"consistent-hash\"\n[pool.p.balancer.config]\npoints = \"x\"\n");
    let (ok, _, stderr, _dir) = check(&text);
    assert!(!ok);
    assert!(stderr.contains("error: weir.toml:12:1: pool.p.balancer.config: "), "{stderr}");
    assert!(stderr.contains("unknown field `points`"), "{stderr}");
    // Inline: at the `config` value.
    let text = format!("{head}affinity = {{ plugin = \"cookie\", config = {{ same_site = \"Sometimes\" }} }}\n");
    let (ok, _, stderr, _dir) = check(&text);
    assert!(!ok);
    assert!(stderr.contains("error: weir.toml:10:42: pool.p.affinity.config: "), "{stderr}");
}

/// `weir check` loads the health evaluators too: a balancer given as one, or a refused
/// evaluator config, is an error at its key, and nothing is said to be ok.
#[test]
fn check_validates_health_evaluators() {
    let head = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
        crate::support::cache_dir().display().to_string()
    );
    let (ok, stdout, stderr, _dir) = check(&format!("{head}health = [{{ plugin = \"round-robin\" }}]\n"));
    assert!(!ok && !stdout.contains(": ok"), "{stdout}");
    assert!(stderr.contains("weir.toml:10:22: pool.p.health[0].plugin: "), "{stderr}");
    assert!(stderr.contains("is for `balancer`, not `health`"), "{stderr}");
    let (ok, _, stderr, _dir) =
        check(&format!("{head}health = [{{ plugin = \"outlier\", config = {{ max_ejection_percent = 101 }} }}]\n"));
    assert!(!ok);
    assert!(stderr.contains("weir.toml:10:42: pool.p.health[0].config: "), "{stderr}");
    let (ok, stdout, stderr, _dir) = check(&format!("{head}probe = {{ kind = \"tcp\" }}\n"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("health threshold over tcp probes every 2s"), "{stdout}");
}

#[test]
fn check_blames_a_plugin_file_that_is_no_component_on_its_plugin_key() {
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\nbalancer = {{ plugin = \"weir.toml\" }}\n",
        crate::support::cache_dir().display().to_string()
    )
    .replace("\"weir.toml\"", "\"./weir.toml\"");
    let (ok, _, stderr, _dir) = check(&text);
    assert!(!ok);
    assert!(stderr.contains("error: weir.toml:10:23: pool.p.balancer.plugin: "), "{stderr}");
}

#[test]
fn check_refuses_an_out_of_range_duration_at_its_place() {
    let (ok, _, stderr, _dir) = check(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\nheader_read_timeout_ms = \"10000000000000000000s\"\n\n[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("error: weir.toml:4:26: listener[0].header_read_timeout_ms: ")
            && stderr.contains("is out of range (1 ms to 7 days)"),
        "{stderr}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn run_starts_as_many_worker_threads_as_the_runtime_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        format!(
            "[runtime]\nworker_threads = 3\n\n[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
            crate::support::cache_dir().display().to_string()
        ),
    )
    .unwrap();
    let logs = crate::support::start_logs(&path);
    let running = logs.last().unwrap();
    assert_eq!(running["fields"]["worker_threads"].as_u64(), Some(3), "{running}");
}

#[test]
fn a_start_error_says_its_cause_once_and_logs_to_a_pipe_carry_no_colour() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"main\"\nlisten = \"{}\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listener `main`: cannot listen on"), "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "the cause is said once: {stderr}");

    // Logs to a pipe (not a terminal) are plain text: no ANSI colour codes.
    drop(taken);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let listening = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("listening")));
    let _ = child.kill();
    let _ = child.wait();
    let line = listening.expect("weir logged that it is listening").unwrap();
    assert!(!line.contains('\u{1b}'), "{line:?}");
}

/// `weir check` builds each TLS listener's settings: a key that does not match its
/// certificate is an error at the certificate's place, naming both files.
#[test]
fn check_blames_a_key_that_does_not_match_its_certificate() {
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\ntls = {{ certificates = [{{ cert = \"site.pem\", key = \"other.key\" }}] }}\n\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
        crate::support::cache_dir().display().to_string()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &text).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["site.test".to_owned()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.path().join("site.pem"), cert.pem()).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.path().join("other.key"), other.serialize_pem()).unwrap();
    let (ok, stdout, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok && !stdout.contains(": ok"), "{stdout}");
    let stderr = stderr.replace(&dir.path().display().to_string(), "DIR");
    assert!(stderr.contains("error: DIR/weir.toml:7:34: listener[0].tls.certificates[0].cert: "), "{stderr}");
    assert!(stderr.contains("DIR/other.key: the key does not match the certificate DIR/site.pem"), "{stderr}");

    // The matching key: ok.
    std::fs::write(dir.path().join("other.key"), key.serialize_pem()).unwrap();
    let (ok, stdout, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}

/// An example config with its listeners and backends moved to free ports (`moves`: the
/// example's address, the one to use), in a directory of its own with the files its
/// first lines make; the weir binary running it.
async fn run_example(name: &str, moves: &[(&str, String)]) -> (crate::support::Weir, tempfile::TempDir) {
    let example = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join(name);
    let dir = make_example_files(&example).unwrap_or_else(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&example, dir.path().join(name)).unwrap();
        dir
    });
    let path = dir.path().join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in moves {
        assert!(text.contains(from), "{name} has no {from}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
    let weir = tokio::task::spawn_blocking(move || crate::support::Weir::run(&path)).await.unwrap();
    (weir, dir)
}

/// examples/tls-h2.toml, run as its comments say (its certificate made by its own
/// `openssl` line): curl gets HTTP/2 or HTTP/1.1 over TLS as it asks, verified against
/// that certificate, from both backends in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_h2_example_serves_curl_over_http2_and_http1() {
    use crate::support::{self, Upstream};
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let listen = support::dead_addr().await;
    let moves = [
        ("127.0.0.1:8443", listen.to_string()),
        ("127.0.0.1:9001", a.addr.to_string()),
        ("127.0.0.1:9002", b.addr.to_string()),
    ];
    let (_weir, dir) = run_example("tls-h2.toml", &moves).await;
    let mut seen = std::collections::BTreeSet::new();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1"), ("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve", &format!("localhost:{}:127.0.0.1", listen.port())])
            .arg("--cacert")
            .arg(dir.path().join("localhost.pem"))
            .args([flag, "-w", "\n%{http_code} %{http_version}", &format!("https://localhost:{}/", listen.port())])
            .output()
            .await
            .expect("curl is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.ends_with(&format!("\n200 {version}")), "{flag}: {text}");
        seen.insert(support::name_of(&text).to_owned());
    }
    assert_eq!(seen, ["a".to_owned(), "b".to_owned()].into(), "round-robin over both backends");
}

/// examples/l4.toml, run: its `least-connections` listener spreads three held
/// connections over its three backends, and its `consistent-hash` listener keeps a client
/// on one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l4_example_spreads_and_pins_tcp_connections() {
    use crate::l4::{greeter, read_line};
    let backends = [greeter("one").await, greeter("two").await, greeter("three").await];
    let (db, cache) = (crate::support::dead_addr().await, crate::support::dead_addr().await);
    let moves = [
        ("127.0.0.1:7000", db.to_string()),
        ("127.0.0.1:7001", cache.to_string()),
        ("127.0.0.1:9001", backends[0].to_string()),
        ("127.0.0.1:9002", backends[1].to_string()),
        ("127.0.0.1:9003", backends[2].to_string()),
    ];
    let (_weir, _dir) = run_example("l4.toml", &moves).await;
    let mut held = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(db).await.unwrap();
        names.insert(read_line(&mut s).await);
        held.push(s);
    }
    assert_eq!(names.len(), 3, "least-connections: {names:?}");
    let mut pinned = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(cache).await.unwrap();
        pinned.insert(read_line(&mut s).await);
    }
    assert_eq!(pinned.len(), 1, "consistent-hash on the client's address: {pinned:?}");
}

/// examples/tls-passthrough.toml, run with two `openssl s_server` backends as its comments
/// say: each name reaches its backend, whose own certificate completes the handshake
/// (`openssl s_client` verifies it), and a name no route has goes to the default pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_passthrough_example_routes_by_sni_to_each_backend() {
    use crate::l4_tls::{TlsBackend, s_client};
    let certs = tempfile::tempdir().unwrap();
    let db = TlsBackend::start(certs.path(), "db.example.com").await;
    let web = TlsBackend::start(certs.path(), "web.example.com").await;
    let listen = crate::support::dead_addr().await;
    let moves = [
        ("127.0.0.1:8443", listen.to_string()),
        ("127.0.0.1:9441", db.addr.to_string()),
        ("127.0.0.1:9442", web.addr.to_string()),
    ];
    let (_weir, _dir) = run_example("tls-passthrough.toml", &moves).await;
    let cases = [
        (Some("db.example.com"), &db, "db.example.com"),
        (Some("www.example.com"), &web, "web.example.com"),
        (Some("elsewhere.org"), &web, "web.example.com"),
    ];
    for (sni, backend, cn) in cases {
        let (ok, subject) = s_client(listen, sni, &backend.cert, cn).await;
        assert!(ok && subject.contains(cn), "SNI {sni:?}: {subject:?}, not {cn}");
    }
}
