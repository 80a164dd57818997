//! A fleet under attack on loopback: the server's embedded broker admits
//! only the server and provisioned vehicles; forged announcements, statuses
//! and updates (retained or not) change nothing; a vehicle that cannot train
//! says so and the round does not wait for it.

use convoy_shared::chunk::ChunkPos;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::AgentState;
use convoy_tests::api::{Announce, ClientTopic, Kind, Status, UpdateBody, UpdateChunk, wire};
use convoy_tests::*;
use std::time::{Duration, Instant};

/// A fleet whose server runs its own (authenticated) embedded broker,
/// serving TLS only: the server reaches it over TLS too.
fn on_embedded_broker(
    test: &str,
    clients: usize,
    seed: u64,
) -> anyhow::Result<(FleetBuilder, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let url = format!("mqtts://{listen}");
    let tls = test_tls();
    let mut builder = Fleet::digits(test, clients, seed)?.server(|c| {
        c.broker.link.url = None;
        c.broker.listen = String::new();
        c.broker.tls_listen = listen.clone();
        c.broker.tls_cert = Some(tls.cert.clone());
        c.broker.tls_key = Some(tls.key.clone());
        c.broker.link.ca_file = Some(tls.ca.clone());
    });
    for i in 0..clients {
        let url = url.clone();
        builder = builder.agent(i, move |a| {
            a.broker.url = Some(url.parse().expect("url"));
            a.broker.ca_file = Some(tls.ca.clone());
        });
    }
    Ok((builder, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_admits_only_the_server_and_provisioned_vehicles() -> anyhow::Result<()> {
    init_tracing();
    let (builder, url) = on_embedded_broker("auth", 2, 21)?;
    let mut fleet = builder.rounds(1).start().await?;
    let row = fleet.next_round(120).await?;
    assert_eq!(
        row.clients_reported, 2,
        "provisioned vehicles log in and train"
    );
    fleet.finish().await?;
    // The broker thread outlives the server task: try it now.
    let own = fleet.agents[0]
        .config
        .broker
        .password
        .clone()
        .expect("provisioned");
    assert!(!login_accepted(&url, "snoop", None).await?, "anonymous");
    assert!(
        !login_accepted(&url, "convoy-server", Some(("convoy-server", "guess"))).await?,
        "the server's id"
    );
    assert!(
        !login_accepted(&url, "car-1", Some(("car-0", &own))).await?,
        "car-0's credentials under car-1's id"
    );
    assert!(
        !login_accepted(&url, "car-1", Some(("car-1", &own))).await?,
        "car-0's password for car-1"
    );
    assert!(login_accepted(&url, "car-0", Some(("car-0", &own))).await?);
    Ok(())
}

/// A second agent started with a running vehicle's id and login (a cloned
/// vehicle, a second service on one computer) is refused by the embedded
/// broker instead of knocking the first off; it exits with an error that
/// says why, and the first keeps training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_a_vehicles_id_exits_and_the_first_trains_on() -> anyhow::Result<()> {
    init_tracing();
    let (builder, _url) = on_embedded_broker("twin", 2, 24)?;
    let mut fleet = builder.rounds(2).start().await?;
    let first = fleet.next_round(120).await?;
    assert_eq!(first.clients_reported, 2);
    let mut twin = fleet.agents[0].config.clone();
    twin.state_dir = fleet.dir().join("twin-of-car-0");
    twin.broker.keep_alive_secs = 5;
    let ran = tokio::time::timeout(
        Duration::from_secs(90),
        convoy_agent::run(twin, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the twin neither exited nor failed in 90 s"))?;
    let error = ran
        .expect_err("the twin must exit with an error")
        .to_string();
    assert!(
        error.contains("another agent runs with this client_id"),
        "{error}"
    );
    let second = fleet.next_round(120).await?;
    assert_eq!(second.status, "finished");
    assert_eq!(
        second.clients_reported, 2,
        "car-0 was not knocked off by its twin"
    );
    fleet.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_statuses_and_updates_change_nothing() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("forged", 2, 22)?.rounds(2).start().await?;
    let first = fleet.next_round(120).await?;
    assert_eq!(first.clients_reported, 2);

    let mallory = SecretKey::generate();
    let mut wire_ = fleet.wire("mallory").await?;
    wire_.subscribe(&fleet.round_topic()).await?;
    let genuine = wire_.next(30).await?;
    let envelope = wire::open(&genuine.payload, 1 << 20)?;
    let mut announce: Announce = postcard::from_bytes(envelope.body)?;
    // The defect-1 and defect-2 announcement: a 4,294,967,295-unit layer
    // for round 1,000,000,000, retained, signed by the wrong key.
    announce.round = 1_000_000_000;
    announce.spec.hidden = vec![u32::MAX];
    let round_topic = fleet.round_topic();
    wire_
        .publish(
            &round_topic,
            wire::encode(Kind::Announce, &announce, &round_topic, &mallory)?,
            true,
        )
        .await?;
    // Defect 4: a retained Offline status for car-0.
    let status_topic = fleet.topic(ClientTopic::Status, "car-0");
    let offline = Status {
        codecs: vec![],
        detail: convoy_shared::messages::detail("forged"),
        ..Status::new(
            convoy_shared::messages::id("car-0").expect("id"),
            AgentState::Offline,
            (7, u64::MAX),
        )
    };
    wire_
        .publish(
            &status_topic,
            wire::encode(Kind::Status, &offline, &status_topic, &mallory)?,
            true,
        )
        .await?;
    // Defect 3: an update on car-0's topic claiming a billion samples.
    let body = postcard::to_allocvec(&UpdateBody {
        samples: 1_000_000_000,
        head: 0,
        stats: Default::default(),
        codec: convoy_shared::codec::Pipeline::FP32,
        encoded: vec![0; 16],
    })?;
    let update_topic = fleet.topic(ClientTopic::Update, "car-0");
    let chunk = UpdateChunk {
        client: convoy_shared::messages::id("car-0").expect("id"),
        round: first.round + 1,
        base_version: Default::default(),
        pos: ChunkPos {
            index: 0,
            count: 1,
            total_len: body.len() as u32,
        },
        data: body,
    };
    wire_
        .publish(
            &update_topic,
            wire::encode(Kind::UpdateChunk, &chunk, &update_topic, &mallory)?,
            false,
        )
        .await?;
    wire_.flush().await?;
    // A vehicle restarting now reads the forged retained announcement first.
    fleet.agents[0].restart().await?;

    let second = fleet.next_round(120).await?;
    let summary = fleet.finish().await?;
    assert_eq!(second.status, "finished");
    assert_eq!(
        second.clients_reported, 2,
        "car-0 is neither offline nor outweighed"
    );
    assert!(second.accuracy.expect("evaluated") > first.accuracy.expect("evaluated") - 0.05);
    assert!(
        summary
            .rejections
            .get("bad_signature")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{:?}",
        summary.rejections
    );
    for agent in &fleet.agents {
        assert!(agent.pending()?.is_none_or(|p| p.round != 1_000_000_000));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_that_cannot_train_is_counted_and_not_waited_for() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("failing", 2, 23)?
        .rounds(1)
        .server(|c| c.rounds.deadline_secs = 600)
        // car-1 refuses every model: its limits are below any real one
        .agent(1, |a| a.limits.max_params = 10)
        .start()
        .await?;
    let started = Instant::now();
    let row = fleet.next_round(600).await?;
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "closed without waiting for the 600 s deadline"
    );
    fleet.finish().await?;
    assert_eq!((row.clients_reported, row.clients_failed), (1, 1));
    let failed = fleet
        .store()?
        .clients(row.round)?
        .into_iter()
        .find(|c| c.client == "car-1")
        .expect("ledger row");
    assert_eq!(failed.status, "failed");
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("model_refused"),
        "{failed:?}"
    );
    Ok(())
}

/// A vehicle stopped cleanly (SIGINT/SIGTERM cancel the same token) leaves
/// a retained `Offline` status on the broker, so the server stops selecting
/// it at once instead of waiting out every round's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_stopped_cleanly_leaves_an_offline_status() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("goodbye", 2, 23)?.rounds(1).start().await?;
    fleet.next_round(120).await?;
    fleet.finish().await?;
    let mut tap = fleet.wire("goodbye-tap").await?;
    tap.subscribe(&format!("convoy/v1/{}/status/+", fleet.name()))
        .await?;
    for _ in 0..2 {
        let m = tap.next(10).await?;
        assert!(m.retain, "a retained status");
        let envelope = wire::open(&m.payload, 1 << 20)?;
        let status: Status = postcard::from_bytes(envelope.body)?;
        assert_eq!(status.state, AgentState::Offline, "{}", m.topic);
    }
    Ok(())
}

/// Opens a link as `car-0` on a runtime of this thread's own (so a log
/// capture on this thread sees the link's own lines), runs `job` on it and
/// closes it.
fn as_car_0<T>(
    config: &convoy_runtime::link::BrokerConfig,
    job: impl AsyncFnOnce(&mut convoy_runtime::link::Link) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let session = convoy_runtime::link::Session {
            client_id: "car-0".into(),
            ..Default::default()
        };
        let mut link = convoy_runtime::link::open(config, session).expect("link");
        let out = job(&mut link).await;
        link.close().await;
        out
    })
}

/// What a vehicle logs when its broker link is refused: a wrong password
/// names the login settings to check, and a broker certificate that does
/// not chain to `broker.ca_file` names the TLS settings. Both against the
/// embedded broker over TLS, through the agent's own link.
#[test]
fn a_refused_login_or_certificate_is_explained_on_the_vehicle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("convoy.db");
    let store = convoy_store::Store::open(&db)?;
    let server = convoy_server::identity::server_key(&dir.path().join("server.key"))?;
    let car: convoy_shared::topics::TopicId = "car-0".parse().map_err(anyhow::Error::msg)?;
    convoy_server::identity::provision(
        &store,
        &server.public().into(),
        &[car],
        &dir.path().join("keys"),
        false,
    )?;
    let broker = Broker::embedded_with_logins("f", "server-secret", &db)?;
    let other_ca = convoy_server::tls::throwaway(&dir.path().join("other-ca"))?;
    let attempt = |password: &str, ca: &std::path::Path| {
        let config = convoy_runtime::link::BrokerConfig {
            username: Some("car-0".into()),
            password: Some(password.into()),
            ca_file: Some(ca.to_path_buf()),
            ..link(&broker.url())
        };
        convoy_runtime::process::logged_at_info(|| {
            as_car_0(&config, async |_| {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            })
        })
    };
    let wrong_password = attempt("guess", &test_tls().ca);
    println!("{wrong_password}");
    assert!(
        wrong_password.contains("broker refused the connection")
            && wrong_password.contains("broker.username")
            && wrong_password.contains("password"),
        "{wrong_password}"
    );
    let wrong_ca = attempt("guess", &other_ca.ca);
    println!("{wrong_ca}");
    assert!(
        wrong_ca.contains("TLS handshake failed") && wrong_ca.contains("broker.ca_file"),
        "{wrong_ca}"
    );
    Ok(())
}

/// Mutual TLS on the embedded broker (`broker.tls_client_ca`): a client
/// without a certificate, or with one from another CA, does not get in; a
/// vehicle with the certificate `provision --tls-ca` issues does.
#[test]
fn the_embedded_broker_can_require_client_certificates() -> anyhow::Result<()> {
    use convoy_server::tls::{Authority, OPERATOR_CA, write};
    let dir = tempfile::tempdir()?;
    let operator = Authority::new(OPERATOR_CA)?;
    let client_ca = dir.path().join("operator-ca.crt");
    write(&client_ca, operator.pem(), false)?;
    let issue =
        |ca: &Authority, name: &str| -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
            let issued = ca.issue_client("car-0")?;
            let (cert, key) = (
                dir.path().join(format!("{name}.crt")),
                dir.path().join(format!("{name}.key")),
            );
            write(&cert, &issued.cert, false)?;
            write(&key, &issued.key, true)?;
            Ok((cert, key))
        };
    let good = issue(&operator, "car-0")?;
    let forged = issue(&Authority::new(OPERATOR_CA)?, "forged")?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let listen = convoy_server::broker::Listen {
        tls: Some(test_tls().listen(addr)),
        client_ca: Some(client_ca),
        ..Default::default()
    };
    convoy_server::broker::start(
        &listen,
        MAX_PACKET,
        convoy_server::broker::Access::Anonymous,
    )?;
    let url = format!("mqtts://{addr}");
    let connects = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| -> bool {
        let config = convoy_runtime::link::BrokerConfig {
            cert_file: cert.map(|c| c.0.clone()),
            key_file: cert.map(|c| c.1.clone()),
            ..link(&url)
        };
        as_car_0(&config, async |link| {
            tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    match link.events.recv().await {
                        Some(convoy_runtime::link::LinkEvent::Connected) => return true,
                        Some(_) => {}
                        None => return false,
                    }
                }
            })
            .await
            .unwrap_or(false)
        })
    };
    assert!(!connects(None), "no client certificate");
    assert!(!connects(Some(&forged)), "a certificate from another CA");
    assert!(connects(Some(&good)), "the operator CA's certificate");
    Ok(())
}
