//! The federation interop harness itself: certificates from the test CA verify for their
//! address only, and a real Synapse on 127.0.0.2 serves clients, serves its keys over TLS
//! from the test CA, and may reach other loopback addresses.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{serde::Base64, signatures::PublicKeyMap, CanonicalJsonObject};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use serde_json::json;

use crate::common::{enc, synapse::Synapse, tls::TestCa};

const SYNAPSE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Runs a TLS handshake in memory between a client that trusts only `trusted` and expects
/// `server_name`, and a server presenting `chain_pem` with `key_pem`.
fn handshake(
    trusted: &TestCa,
    server_name: ServerName<'static>,
    (chain_pem, key_pem): (String, String),
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2, "the chain file holds the leaf, then the CA");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "the key is PKCS#8");
    let server_config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client: Connection = ClientConnection::new(Arc::new(client_config), server_name)
        .unwrap()
        .into();
    let mut server: Connection = ServerConnection::new(Arc::new(server_config))
        .unwrap()
        .into();
    for _round in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        shuttle(&mut client, &mut server)?;
        shuttle(&mut server, &mut client)?;
    }
    panic!("the handshake did not finish in 10 rounds");
}

/// Moves every TLS record `from` wants to send into `to`, and lets `to` process them.
fn shuttle(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut records = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut records).unwrap();
    }
    let mut unread = &records[..];
    while !unread.is_empty() {
        to.read_tls(&mut unread).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

#[test]
fn test_ca_leaf_verifies_for_its_ip_and_names_only() {
    let ca = TestCa::new();
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let issued = || ca.issue_pem(ip(2), &["synapse.test"]);

    handshake(&ca, ServerName::IpAddress(ip(2).into()), issued()).unwrap();
    handshake(&ca, ServerName::try_from("synapse.test").unwrap(), issued()).unwrap();

    let wrong_ip = handshake(&ca, ServerName::IpAddress(ip(3).into()), issued());
    assert!(
        matches!(
            wrong_ip,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{wrong_ip:?}"
    );
    let other_ca = handshake(
        &TestCa::new(),
        ServerName::IpAddress(ip(2).into()),
        issued(),
    );
    assert!(
        matches!(
            other_ca,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{other_ca:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (chain_path, key_path) = ca.issue(ip(2), &[], dir.path());
    let chain_pem = std::fs::read_to_string(chain_path).unwrap();
    assert!(
        chain_pem.ends_with(ca.cert_pem()),
        "the chain file ends with the CA"
    );
    assert!(std::fs::read_to_string(key_path)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        std::fs::read_to_string(ca.write_ca(dir.path())).unwrap(),
        ca.cert_pem()
    );
}

#[tokio::test]
async fn synapse_on_loopback_serves_clients_and_tls_federation() {
    // Linux routes all of 127.0.0.0/8 to `lo`, so any of these addresses can be bound.
    std::net::TcpListener::bind((SYNAPSE_IP, 0)).expect("127.0.0.2 is not bindable here");
    let ca = TestCa::new();
    let started = Instant::now();
    let synapse = Synapse::start(SYNAPSE_IP, &ca).await;
    eprintln!(
        "synapse_harness: Synapse answered after {:?}",
        started.elapsed()
    );
    let server_name = synapse.server_name().to_owned();
    assert!(server_name.starts_with("127.0.0.2:"), "{server_name}");

    // Client API: two users, a room, an invite and join, a message read back by the other.
    let (alice_id, alice_token) = synapse.register("alice", "alice password").await;
    let (bob_id, bob_token) = synapse.register("bob", "bob password").await;
    assert_eq!(alice_id, format!("@alice:{server_name}"));
    let alice = synapse.client(Some(&alice_token));
    let bob = synapse.client(Some(&bob_token));
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let room = enc(&room_id);
    alice
        .post_ok(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": bob_id}),
        )
        .await;
    bob.post_ok(&format!("/_matrix/client/v3/join/{room}"), json!({}))
        .await;
    let event_id = alice.send_text(&room_id, "txn1", "hello from alice").await;
    let messages = bob
        .get_ok(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"
        ))
        .await;
    let newest = &messages["chunk"][0];
    assert_eq!(newest["event_id"], event_id.as_str(), "{messages}");
    assert_eq!(newest["sender"], alice_id.as_str());
    assert_eq!(newest["content"]["body"], "hello from alice");

    // Federation: a TLS handshake trusting only the test CA, and keys signed by the server.
    let url = format!("{}/_matrix/key/v2/server", synapse.federation_base());
    let response = ca.https_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let keys: serde_json::Value = response.json().await.unwrap();
    assert_eq!(keys["server_name"], server_name.as_str(), "{keys}");
    let verify_keys = keys["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1, "{keys}");
    let (key_id, key) = verify_keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");
    let public_key = Base64::parse(key["key"].as_str().unwrap()).unwrap();
    let key_map =
        PublicKeyMap::from([(server_name.clone(), [(key_id.clone(), public_key)].into())]);
    let signed: CanonicalJsonObject = serde_json::from_value(keys.clone()).unwrap();
    ruma::signatures::verify_json(&key_map, &signed).expect("the key response is self-signed");

    let refused = TestCa::new().https_client().get(&url).send().await;
    assert!(
        refused.is_err(),
        "a client trusting another CA must refuse Synapse's certificate"
    );

    // Synapse may reach other loopback addresses: asking it for the profile of a user on
    // 127.0.0.3 makes it connect there (it gets no TLS answer, which is fine here).
    let remote = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let remote_user = format!("@carol:{}", remote.local_addr().unwrap());
    let lookup = tokio::spawn(async move {
        alice
            .get(&format!("/_matrix/client/v3/profile/{}", enc(&remote_user)))
            .await
    });
    let connected = tokio::time::timeout(Duration::from_secs(20), remote.accept()).await;
    assert!(
        matches!(connected, Ok(Ok(_))),
        "Synapse did not connect to 127.0.0.3 (is loopback blocked in its config?):\n{}",
        synapse.log_tail(20)
    );
    lookup.abort();
    eprintln!("synapse_harness: test done after {:?}", started.elapsed());
}

#[tokio::test]
async fn two_synapses_on_loopback_federate_through_the_test_ca() {
    let ca = TestCa::new();
    let (first, second) = tokio::join!(
        Synapse::start(SYNAPSE_IP, &ca),
        Synapse::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), &ca),
    );
    let (_, alice_token) = first.register("alice", "alice password").await;
    let (bob_id, bob_token) = second.register("bob", "bob password").await;
    let alice = first.client(Some(&alice_token));
    let bob = second.client(Some(&bob_token));

    // Bob's server resolves the alias on Alice's, then joins with make_join/send_join; each
    // server fetches the other's keys over TLS checked against the test CA.
    let room_id = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "harness"}))
        .await;
    let alias = format!("#harness:{}", first.server_name());
    let joined = bob
        .post_ok(
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            json!({}),
        )
        .await;
    assert_eq!(joined["room_id"], room_id.as_str());

    let event_id = alice.send_text(&room_id, "txn1", "across servers").await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room_id),
        enc(&event_id)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, event) = bob.get(&path).await;
        if status == 200 {
            assert_eq!(event["content"]["body"], "across servers");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bob_id} never received {event_id}: {event}\nfirst:\n{}\nsecond:\n{}",
            first.log_tail(20),
            second.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
