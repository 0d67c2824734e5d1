//! Topic rules for user topics (issue 3): a matrix of own/other inbox and outbox,
//! wildcards and `$` filters, with rumqttc and again with mosquitto_sub/pub. Group and
//! presence rules are tested with the social graph (groups.rs, friends.rs).

use std::time::Duration;

use mqim_tests::{have_tool, start_server, WAIT};

#[tokio::test]
async fn subscribe_matrix_for_user_topics() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let mut c = s.mqtt(&a, None).await;
    let (me, other) = (a.id, b.id);
    let cases: Vec<(String, bool)> = vec![
        (format!("im/u/{me}/in/json"), true),
        (format!("im/u/{me}/in/pb"), true),
        (format!("im/u/{me}/in/+"), true),
        (format!("im/u/{me}/in/#"), true),
        (format!("im/u/{other}/in/json"), false),
        (format!("im/u/{other}/in/+"), false),
        (format!("im/u/{me}/out/json"), false),
        (format!("im/u/{other}/out/json"), false),
        (format!("im/u/{me}/#"), false),
        (format!("im/p/{me}"), true),
        (format!("im/p/{other}"), false),
        ("im/p/+".into(), false),
        ("im/u/+/in/+".into(), false),
        ("im/u/+/in/json".into(), false),
        ("im/g/+/in/json".into(), false),
        ("im/#".into(), false),
        ("#".into(), false),
        ("+/+/+/+/+".into(), false),
        ("mqim/sink".into(), false),
        (format!("mqim/d/{me}/alice/json"), false),
        (format!("$share/g/im/u/{me}/in/json"), false),
        ("$SYS/#".into(), false),
        ("$x".into(), false),
    ];
    // Each alone, and all in one packet (judged one by one).
    for (filter, ok) in &cases {
        assert_eq!(c.subscribe_ok(&[filter]).await, [*ok], "{filter}");
    }
    let filters: Vec<&str> = cases.iter().map(|(f, _)| f.as_str()).collect();
    let expect: Vec<bool> = cases.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(c.subscribe_ok(&filters).await, expect);
    // `$` filters did not disconnect anyone.
    assert!(c.closed_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn publishes_outside_the_rules_are_dropped() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let mut victim = s.mqtt(&b, None).await;
    let inbox = format!("im/u/{}/in/+", b.id);
    assert_eq!(
        victim
            .subscribe_ok(&[&inbox, &format!("im/p/{}", b.id)])
            .await,
        [true, true]
    );
    let attacker = s.mqtt(&a, None).await;
    for topic in [
        format!("im/u/{}/in/json", b.id),
        format!("im/u/{}/in/pb", b.id),
        format!("im/u/{}/out/json", b.id),
        format!("im/p/{}", b.id),
        format!("mqim/d/{}/bob/json", b.id),
        "mqim/sink".to_owned(),
    ] {
        attacker
            .publish(&topic, r#"{"type":"message","forged":true}"#)
            .await;
    }
    // Only the server's own presence update may arrive; nothing forged does.
    while let Some(r) = victim.recv_within(Duration::from_millis(500)).await {
        let text = String::from_utf8_lossy(&r.payload).into_owned();
        assert!(
            !text.contains("forged"),
            "forged publish delivered on {}: {text}",
            r.topic
        );
        assert_eq!(r.topic, format!("im/p/{}", b.id), "{text}");
    }
    let m = s.metrics_text().await;
    assert!(
        m.contains("mqim_mqtt_denied_total{kind=\"publish\"} 6"),
        "{m}"
    );
}

#[tokio::test]
async fn mosquitto_clients_are_denied_too() {
    if !have_tool("mosquitto_sub") || !have_tool("mosquitto_pub") {
        return;
    }
    let s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    for filter in [
        "#".to_owned(),
        format!("im/u/{}/in/json", b.id),
        "$SYS/#".into(),
    ] {
        let out = tokio::time::timeout(
            WAIT,
            s.mosquitto(
                "mosquitto_sub",
                "alice-cli",
                "alice",
                &a.token,
                &["-t", &filter, "-W", "5"],
            )
            .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("denied"), "{filter}: {err}");
    }
    // A forged frame published into bob's inbox never reaches bob.
    let mut victim = s.mqtt(&b, None).await;
    assert_eq!(
        victim
            .subscribe_ok(&[&format!("im/u/{}/in/json", b.id)])
            .await,
        [true]
    );
    let st = s
        .mosquitto(
            "mosquitto_pub",
            "alice-pub",
            "alice",
            &a.token,
            &[
                "-q",
                "1",
                "-t",
                &format!("im/u/{}/in/json", b.id),
                "-m",
                "forged",
            ],
        )
        .status()
        .await
        .unwrap();
    assert!(st.success());
    victim.expect_nothing(Duration::from_millis(500)).await;
}
