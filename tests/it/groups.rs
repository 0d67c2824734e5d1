//! Groups over REST with live events over MQTT (issue 4), and the group topic rules
//! that follow membership at once (issue 3).

use std::time::Duration;

use mqim_tests::http::assert_error;
use mqim_tests::{have_tool, start_server, start_server_with, MqttClient, Server, TestUser, WAIT};
use serde_json::{json, Value};

use crate::friends::{event, inbox};

/// Creates a group owned by `owner`; returns its id.
async fn group(s: &Server, owner: &TestUser, name: &str, policy: &str) -> i64 {
    let r = s
        .http
        .post(
            "/api/v1/groups",
            &owner.token,
            json!({"name": name, "announcement": "welcome", "join_policy": policy}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["my_role"], "owner");
    assert_eq!(r.1["member_count"], 1);
    r.1["id"].as_i64().unwrap()
}

/// `by` adds `u` to group `gid`.
async fn add(s: &Server, gid: i64, by: &TestUser, u: &TestUser) {
    let r = s
        .http
        .post(
            &format!("/api/v1/groups/{gid}/members"),
            &by.token,
            json!({"user_id": u.id}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
}

/// Connects `u` subscribed only to group `gid`'s JSON topic.
async fn group_sub(s: &Server, u: &TestUser, gid: i64, device: &str) -> MqttClient {
    let mut c = s.mqtt(u, Some(device)).await;
    assert_eq!(
        c.subscribe_ok(&[&format!("im/g/{gid}/in/json")]).await,
        [true]
    );
    c
}

async fn set_announcement(s: &Server, gid: i64, by: &TestUser, text: &str) {
    let r = s
        .http
        .patch(
            &format!("/api/v1/groups/{gid}"),
            &by.token,
            json!({"announcement": text}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
}

fn ids(page: &Value, key: &str) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn approval_join_then_approve_and_who_may_answer() {
    let s = start_server().await;
    let h = &s.http;
    let [o, m, j] = s.register_all(["owner", "member", "joiner"]).await;
    let gid = group(&s, &o, "Rust Club", "approval").await;
    add(&s, gid, &o, &m).await;
    let mut co = inbox(&s, &o, "json").await;
    let mut cj = inbox(&s, &j, "json").await;
    let mut cm = group_sub(&s, &m, gid, "g").await;

    // A non-member may not subscribe to the group topic.
    let mut stranger = s.mqtt(&j, Some("g")).await;
    assert_eq!(
        stranger
            .subscribe_ok(&[&format!("im/g/{gid}/in/json")])
            .await,
        [false]
    );

    let r = h
        .post(
            &format!("/api/v1/groups/{gid}/join-requests"),
            &j.token,
            json!({"message": "let me in"}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["state"], "pending");
    let rid = r.1["id"].as_i64().unwrap();
    let ev = event(&mut co, "GROUP_JOIN_REQUEST").await;
    assert_eq!(ev["group_id"], gid);
    assert_eq!(ev["request"]["id"], rid);
    assert_eq!(ev["request"]["user"]["id"], j.id);
    assert_eq!(ev["request"]["message"], "let me in");
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{gid}/join-requests"),
            &j.token,
            json!({}),
        )
        .await,
        409,
        "request_pending",
    );
    // Not a member yet.
    assert_error(
        &h.get(&format!("/api/v1/groups/{gid}/members"), &j.token)
            .await,
        403,
        "not_member",
    );

    // An owner who was offline finds the pending request through REST.
    let r = h
        .get(
            &format!("/api/v1/groups/{gid}/join-requests?state=pending"),
            &o.token,
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&r.1, "id"), [rid]);
    // A plain member can neither list, approve nor kick.
    let accept = format!("/api/v1/groups/{gid}/join-requests/{rid}/accept");
    assert_error(
        &h.get(&format!("/api/v1/groups/{gid}/join-requests"), &m.token)
            .await,
        403,
        "not_admin",
    );
    assert_error(
        &h.post(&accept, &m.token, json!({})).await,
        403,
        "not_admin",
    );
    assert_error(
        &h.post(&accept, &j.token, json!({})).await,
        403,
        "not_member",
    );
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}/members/{}", o.id), &m.token)
            .await,
        403,
        "not_admin",
    );

    let r = h.post(&accept, &o.token, json!({})).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "accepted");
    let ev = event(&mut cj, "GROUP_JOINED").await;
    assert_eq!(ev["group_id"], gid);
    assert_eq!(ev["user"]["id"], j.id);
    assert_eq!(ev["role"], "member");
    assert_eq!(ev["by"], o.id);
    // Members on the group topic see the newcomer too.
    let ev = event(&mut cm, "GROUP_JOINED").await;
    assert_eq!(ev["user"]["id"], j.id);
    assert_error(
        &h.post(&accept, &o.token, json!({})).await,
        409,
        "request_not_pending",
    );

    // Now a member: the group is in their list and its topic is open to them.
    let r = h.get("/api/v1/me/groups", &j.token).await;
    assert_eq!(ids(&r.1, "id"), [gid]);
    assert_eq!(r.1["items"][0]["my_role"], "member");
    assert_eq!(r.1["items"][0]["member_count"], 3);
    assert_eq!(
        stranger
            .subscribe_ok(&[&format!("im/g/{gid}/in/json")])
            .await,
        [true]
    );
    let r = h
        .get(&format!("/api/v1/groups/{gid}/members"), &j.token)
        .await;
    assert_eq!(ids(&r.1, "id"), [o.id, m.id, j.id]);
    assert_eq!(r.1["items"][0]["role"], "owner");
}

#[tokio::test]
async fn rejecting_a_join_request_tells_the_requester() {
    let s = start_server().await;
    let h = &s.http;
    let (o, j) = (s.register("owner").await, s.register("joiner").await);
    let gid = group(&s, &o, "Quiet", "approval").await;
    let mut cj = inbox(&s, &j, "json").await;
    let r = h
        .post(
            &format!("/api/v1/groups/{gid}/join-requests"),
            &j.token,
            json!({}),
        )
        .await;
    let rid = r.1["id"].as_i64().unwrap();
    let r = h
        .post(
            &format!("/api/v1/groups/{gid}/join-requests/{rid}/reject"),
            &o.token,
            json!({}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "rejected");
    let ev = event(&mut cj, "GROUP_JOIN_REJECTED").await;
    assert_eq!(ev["request_id"], rid);
    assert_eq!(ev["group_id"], gid);
    let r = h.get("/api/v1/me/groups", &j.token).await;
    assert_eq!(ids(&r.1, "id"), Vec::<i64>::new());
    // A request of another group is not found under this one.
    let other = group(&s, &o, "Other", "approval").await;
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{other}/join-requests/{rid}/accept"),
            &o.token,
            json!({}),
        )
        .await,
        404,
        "request_not_found",
    );
}

#[tokio::test]
async fn join_policies_search_and_who_may_add() {
    let s = start_server().await;
    let h = &s.http;
    let (o, m, u, v) = (
        s.register("owner").await,
        s.register("member").await,
        s.register("user").await,
        s.register("victor").await,
    );
    let open = group(&s, &o, "Open Chat", "open").await;
    let appr = group(&s, &o, "Open Minds", "approval").await;
    let secret = group(&s, &o, "Open Secret", "invite_only").await;

    // Open: joining is immediate and announced.
    let mut cu = inbox(&s, &u, "json").await;
    let r = h
        .post(
            &format!("/api/v1/groups/{open}/join-requests"),
            &m.token,
            json!({}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["state"], "accepted");
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{open}/join-requests"),
            &m.token,
            json!({}),
        )
        .await,
        409,
        "already_member",
    );
    // In an open group any member may add people.
    add(&s, open, &m, &u).await;
    let ev = event(&mut cu, "GROUP_JOINED").await;
    assert_eq!(ev["group_id"], open);
    assert_eq!(ev["by"], m.id);
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{open}/members"),
            &m.token,
            json!({"user_id": u.id}),
        )
        .await,
        409,
        "already_member",
    );
    // In an approval group only owner and admins add.
    add(&s, appr, &o, &m).await;
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{appr}/members"),
            &m.token,
            json!({"user_id": v.id}),
        )
        .await,
        403,
        "not_admin",
    );

    // invite_only: hidden from non-members, not joinable, not searchable.
    for path in [
        format!("/api/v1/groups/{secret}"),
        format!("/api/v1/groups/{secret}/members"),
    ] {
        assert_error(&h.get(&path, &v.token).await, 404, "group_not_found");
    }
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{secret}/join-requests"),
            &v.token,
            json!({}),
        )
        .await,
        404,
        "group_not_found",
    );
    let r = h.get("/api/v1/groups?q=open", &v.token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&r.1, "id"), [open, appr]);
    assert_eq!(r.1["items"][0]["my_role"], Value::Null);
    let r = h.get("/api/v1/groups?q=OPEN%20c&limit=1", &v.token).await;
    assert_eq!(ids(&r.1, "id"), [open]);
    assert_eq!(r.1["next_offset"], 1);
    // The owner sees it and may add.
    let r = h.get(&format!("/api/v1/groups/{secret}"), &o.token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["join_policy"], "invite_only");
    assert_eq!(r.1["announcement"], "welcome");
    add(&s, secret, &o, &v).await;
    let r = h.get(&format!("/api/v1/groups/{secret}"), &v.token).await;
    assert_eq!(r.1["my_role"], "member");
    // Someone who blocks the adder cannot be added by them.
    assert_eq!(
        h.put(&format!("/api/v1/blocks/{}", o.id), &u.token, json!({}))
            .await
            .0,
        204
    );
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{secret}/members"),
            &o.token,
            json!({"user_id": u.id}),
        )
        .await,
        403,
        "blocked",
    );
}

#[tokio::test]
async fn a_kicked_member_stops_receiving_the_group_at_once() {
    let s = start_server().await;
    let h = &s.http;
    let (o, a, k, r) = (
        s.register("owner").await,
        s.register("admin").await,
        s.register("kicked").await,
        s.register("remains").await,
    );
    let gid = group(&s, &o, "Team", "invite_only").await;
    for u in [&a, &k, &r] {
        add(&s, gid, &o, u).await;
    }
    let p = h
        .patch(
            &format!("/api/v1/groups/{gid}/members/{}", a.id),
            &o.token,
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(p.0, 200, "{}", p.1);
    assert_eq!(p.1["role"], "admin");

    let mut kicked_inbox = inbox(&s, &k, "json").await;
    let mut kicked_group = group_sub(&s, &k, gid, "g").await;
    let mut remaining = group_sub(&s, &r, gid, "g").await;
    // Both receive group traffic before the kick.
    set_announcement(&s, gid, &o, "before").await;
    for c in [&mut kicked_group, &mut remaining] {
        let ev = event(c, "GROUP_UPDATED").await;
        assert_eq!(ev["group"]["announcement"], "before");
    }

    // Admins act on plain members only.
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}/members/{}", o.id), &a.token)
            .await,
        403,
        "outranked",
    );
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}/members/424242"), &a.token)
            .await,
        404,
        "member_not_found",
    );
    let d = h
        .delete(&format!("/api/v1/groups/{gid}/members/{}", k.id), &a.token)
        .await;
    assert_eq!(d.0, 204, "{}", d.1);
    let ev = event(&mut kicked_inbox, "GROUP_KICKED").await;
    assert_eq!(ev["group_id"], gid);
    assert_eq!(ev["user_id"], k.id);
    assert_eq!(ev["by"], a.id);
    let ev = event(&mut remaining, "GROUP_KICKED").await;
    assert_eq!(ev["user_id"], k.id);

    // New group traffic reaches the remaining member but not the earlier subscription
    // of the kicked one.
    set_announcement(&s, gid, &o, "after").await;
    let ev = event(&mut remaining, "GROUP_UPDATED").await;
    assert_eq!(ev["group"]["announcement"], "after");
    kicked_group
        .expect_nothing(Duration::from_millis(500))
        .await;
    kicked_inbox
        .expect_nothing(Duration::from_millis(100))
        .await;
    assert_eq!(
        kicked_group
            .subscribe_ok(&[&format!("im/g/{gid}/in/json")])
            .await,
        [false]
    );
    // The group is invisible to them now.
    assert_error(
        &h.get(&format!("/api/v1/groups/{gid}"), &k.token).await,
        404,
        "group_not_found",
    );
}

#[tokio::test]
async fn leaving_a_group() {
    let s = start_server().await;
    let h = &s.http;
    let [o, l, r] = s.register_all(["owner", "leaver", "remains"]).await;
    let gid = group(&s, &o, "Club", "open").await;
    add(&s, gid, &o, &l).await;
    add(&s, gid, &o, &r).await;
    let mut cl = inbox(&s, &l, "json").await;
    let mut leaver_group = group_sub(&s, &l, gid, "g").await;
    let mut remaining = group_sub(&s, &r, gid, "g").await;

    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}/members/{}", o.id), &o.token)
            .await,
        409,
        "owner_cannot_leave",
    );
    let d = h
        .delete(&format!("/api/v1/groups/{gid}/members/{}", l.id), &l.token)
        .await;
    assert_eq!(d.0, 204, "{}", d.1);
    assert_eq!(event(&mut cl, "GROUP_LEFT").await["user_id"], l.id);
    assert_eq!(event(&mut remaining, "GROUP_LEFT").await["user_id"], l.id);
    set_announcement(&s, gid, &o, "after").await;
    event(&mut remaining, "GROUP_UPDATED").await;
    leaver_group
        .expect_nothing(Duration::from_millis(300))
        .await;
    let r = h.get("/api/v1/me/groups", &l.token).await;
    assert_eq!(ids(&r.1, "id"), Vec::<i64>::new());
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}/members/{}", l.id), &l.token)
            .await,
        403,
        "not_member",
    );
    // An open group can be joined again.
    let r = h
        .post(
            &format!("/api/v1/groups/{gid}/join-requests"),
            &l.token,
            json!({}),
        )
        .await;
    assert_eq!(r.1["state"], "accepted");
}

#[tokio::test]
async fn dissolving_tells_every_member() {
    let s = start_server().await;
    let h = &s.http;
    let [o, a, m] = s.register_all(["owner", "admin", "member"]).await;
    let gid = group(&s, &o, "Short Lived", "approval").await;
    add(&s, gid, &o, &a).await;
    add(&s, gid, &o, &m).await;
    h.patch(
        &format!("/api/v1/groups/{gid}/members/{}", a.id),
        &o.token,
        json!({"role": "admin"}),
    )
    .await;
    let mut clients = Vec::new();
    for u in [&o, &a, &m] {
        clients.push(inbox(&s, u, "json").await);
    }
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}"), &a.token).await,
        403,
        "not_owner",
    );
    let d = h.delete(&format!("/api/v1/groups/{gid}"), &o.token).await;
    assert_eq!(d.0, 204, "{}", d.1);
    for c in &mut clients {
        let ev = event(c, "GROUP_DISSOLVED").await;
        assert_eq!(ev["group_id"], gid);
        assert_eq!(ev["group_name"], "Short Lived");
        assert_eq!(ev["by"], o.id);
    }
    for u in [&o, &a, &m] {
        assert_error(
            &h.get(&format!("/api/v1/groups/{gid}"), &u.token).await,
            404,
            "group_not_found",
        );
        let r = h.get("/api/v1/me/groups", &u.token).await;
        assert_eq!(ids(&r.1, "id"), Vec::<i64>::new());
    }
    assert_eq!(
        clients[2]
            .subscribe_ok(&[&format!("im/g/{gid}/in/json")])
            .await,
        [false]
    );
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}"), &o.token).await,
        404,
        "group_not_found",
    );
}

#[tokio::test]
async fn roles_ownership_transfer_and_mutes() {
    let s = start_server().await;
    let h = &s.http;
    let [o, a, m] = s.register_all(["owner", "admin", "member"]).await;
    let gid = group(&s, &o, "Ranks", "invite_only").await;
    add(&s, gid, &o, &a).await;
    add(&s, gid, &o, &m).await;
    let member = |u: &TestUser| format!("/api/v1/groups/{gid}/members/{}", u.id);
    assert_eq!(
        h.patch(&member(&a), &o.token, json!({"role": "admin"}))
            .await
            .0,
        200
    );
    let mut cm = inbox(&s, &m, "json").await;

    // Only the owner changes roles; the owner cannot just step down.
    assert_error(
        &h.patch(&member(&m), &a.token, json!({"role": "admin"}))
            .await,
        403,
        "not_owner",
    );
    assert_error(
        &h.patch(&member(&o), &o.token, json!({"role": "member"}))
            .await,
        409,
        "owner_must_transfer",
    );
    assert_error(
        &h.patch(&member(&m), &o.token, json!({"role": "king"}))
            .await,
        422,
        "invalid_body",
    );

    // Admins mute members, not admins or the owner; members mute nobody.
    let until = mqim_now() + 3_600_000;
    let r = h
        .patch(&member(&m), &a.token, json!({"muted_until": until}))
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["muted_until"], until);
    let ev = event(&mut cm, "GROUP_MEMBER_UPDATED").await;
    assert_eq!(ev["user"]["id"], m.id);
    assert_eq!(ev["muted_until"], until);
    assert_error(
        &h.patch(&member(&o), &a.token, json!({"muted_until": until}))
            .await,
        403,
        "outranked",
    );
    assert_error(
        &h.patch(&member(&a), &m.token, json!({"muted_until": until}))
            .await,
        403,
        "not_admin",
    );
    assert_error(
        &h.patch(&member(&m), &a.token, json!({"muted_until": 1000}))
            .await,
        422,
        "invalid_muted_until",
    );
    let r = h
        .patch(&member(&m), &a.token, json!({"muted_until": null}))
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["muted_until"], Value::Null);

    // Ownership transfer: the target becomes owner, the old owner admin.
    let r = h
        .patch(&member(&m), &o.token, json!({"role": "owner"}))
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["role"], "owner");
    let g = h.get(&format!("/api/v1/groups/{gid}"), &o.token).await;
    assert_eq!(g.1["owner_id"], m.id);
    assert_eq!(g.1["my_role"], "admin");
    let r = h
        .get(&format!("/api/v1/groups/{gid}/members"), &m.token)
        .await;
    assert_eq!(ids(&r.1, "id")[0], m.id);
    assert_error(
        &h.delete(&format!("/api/v1/groups/{gid}"), &o.token).await,
        403,
        "not_owner",
    );
    // The new owner may now kick the former owner.
    assert_eq!(h.delete(&member(&o), &m.token).await.0, 204);
}

fn mqim_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn group_limits_are_enforced() {
    let s = start_server_with(&[
        ("MQIM_LIMITS__MAX_GROUP_MEMBERS", "2"),
        ("MQIM_LIMITS__MAX_GROUPS_PER_USER", "2"),
    ])
    .await;
    let h = &s.http;
    let [o, u, v] = s.register_all(["owner", "user", "victor"]).await;
    let g1 = group(&s, &o, "One", "open").await;
    let r = h
        .post(
            &format!("/api/v1/groups/{g1}/join-requests"),
            &u.token,
            json!({}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{g1}/join-requests"),
            &v.token,
            json!({}),
        )
        .await,
        409,
        "group_full",
    );
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{g1}/members"),
            &o.token,
            json!({"user_id": v.id}),
        )
        .await,
        409,
        "group_full",
    );
    group(&s, &o, "Two", "open").await;
    assert_error(
        &h.post(
            "/api/v1/groups",
            &o.token,
            json!({"name": "Three", "join_policy": "open"}),
        )
        .await,
        409,
        "group_limit_reached",
    );
    // The owner is in two groups: nobody can add them to a third.
    let g3 = group(&s, &v, "Victor's", "open").await;
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{g3}/members"),
            &v.token,
            json!({"user_id": o.id}),
        )
        .await,
        409,
        "group_limit_reached",
    );
}

#[tokio::test]
async fn unknown_ids_and_bad_input_are_4xx() {
    let s = start_server().await;
    let h = &s.http;
    let o = s.register("owner").await;
    let gid = group(&s, &o, "Real", "approval").await;
    for path in [
        "/api/v1/groups/999999".to_owned(),
        "/api/v1/groups/999999/members".to_owned(),
        "/api/v1/groups/999999/join-requests".to_owned(),
    ] {
        assert_error(&h.get(&path, &o.token).await, 404, "group_not_found");
    }
    for path in [
        "/api/v1/groups/abc",
        "/api/v1/groups/1.5/members",
        "/api/v1/groups/99999999999999999999999",
    ] {
        let r = h.get(path, &o.token).await;
        assert_eq!(r.0, 404, "{path}: {}", r.1);
    }
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{gid}/join-requests/777/accept"),
            &o.token,
            json!({}),
        )
        .await,
        404,
        "request_not_found",
    );
    assert_error(
        &h.post(
            &format!("/api/v1/groups/{gid}/members"),
            &o.token,
            json!({"user_id": 31337}),
        )
        .await,
        404,
        "user_not_found",
    );
    assert_error(
        &h.patch(
            &format!("/api/v1/groups/{gid}/members/31337"),
            &o.token,
            json!({"muted_until": null}),
        )
        .await,
        404,
        "member_not_found",
    );
    assert_error(
        &h.patch("/api/v1/groups/999999", &o.token, json!({})).await,
        404,
        "group_not_found",
    );
    for (body, code) in [
        (json!({"name": "  ", "join_policy": "open"}), "invalid_name"),
        (
            json!({"name": "x".repeat(65), "join_policy": "open"}),
            "invalid_name",
        ),
        (
            json!({"name": "ok", "join_policy": "secret"}),
            "invalid_body",
        ),
        (json!({"name": "ok"}), "invalid_body"),
        (
            json!({"name": "ok", "join_policy": "open", "announcement": "x".repeat(1001)}),
            "invalid_announcement",
        ),
    ] {
        assert_error(&h.post("/api/v1/groups", &o.token, body).await, 422, code);
    }
    assert_error(
        &h.patch(
            &format!("/api/v1/groups/{gid}"),
            &o.token,
            json!({"name": ""}),
        )
        .await,
        422,
        "invalid_name",
    );
    let r = h
        .patch(
            &format!("/api/v1/groups/{gid}"),
            &o.token,
            json!({"name": "Renamed", "join_policy": "open"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["name"], "Renamed");
    assert_eq!(r.1["join_policy"], "open");
    assert_eq!(r.1["announcement"], "welcome");
}

#[tokio::test]
async fn openapi_documents_the_social_endpoints() {
    let s = start_server().await;
    let r = s
        .http
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    let paths = r.1["paths"].as_object().unwrap();
    for p in [
        "/api/v1/friends",
        "/api/v1/friends/{user_id}",
        "/api/v1/friends/requests",
        "/api/v1/friends/requests/{id}/accept",
        "/api/v1/friends/requests/{id}/reject",
        "/api/v1/blocks",
        "/api/v1/blocks/{user_id}",
        "/api/v1/groups",
        "/api/v1/me/groups",
        "/api/v1/groups/{id}",
        "/api/v1/groups/{id}/join-requests",
        "/api/v1/groups/{id}/join-requests/{rid}/accept",
        "/api/v1/groups/{id}/join-requests/{rid}/reject",
        "/api/v1/groups/{id}/members",
        "/api/v1/groups/{id}/members/{user_id}",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    for (p, m) in [
        ("/api/v1/groups/{id}", "patch"),
        ("/api/v1/groups/{id}", "delete"),
        ("/api/v1/groups/{id}/members/{user_id}", "patch"),
        ("/api/v1/groups/{id}/members/{user_id}", "delete"),
        ("/api/v1/blocks/{user_id}", "put"),
    ] {
        assert!(paths[p].get(m).is_some(), "openapi lacks {m} {p}");
    }
}

#[tokio::test]
async fn mosquitto_sub_of_a_non_member_is_denied() {
    if !have_tool("mosquitto_sub") {
        return;
    }
    let s = start_server().await;
    let (o, x) = (s.register("owner").await, s.register("outsider").await);
    let gid = group(&s, &o, "Private", "open").await;
    let topic = format!("im/g/{gid}/in/json");
    let sub = |user: &TestUser, id: &str| {
        let mut c = s.mosquitto(
            "mosquitto_sub",
            id,
            &user.username,
            &user.token,
            &["-q", "1", "-t", &topic, "-C", "1", "-W", "8"],
        );
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    // The outsider's only subscription is refused: mosquitto_sub says so and ends
    // without waiting for its timeout.
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(WAIT, sub(&x, "outsider-cli").output())
        .await
        .expect("mosquitto_sub ends")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("denied"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8), "{text}");

    // The owner's subscription is granted and receives the group's events.
    let mut owner = sub(&o, "owner-cli").spawn().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    let status = loop {
        n += 1;
        set_announcement(&s, gid, &o, &format!("update {n}")).await;
        if let Ok(st) = tokio::time::timeout(Duration::from_millis(300), owner.wait()).await {
            break st.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no group frame reached the owner's mosquitto_sub"
        );
    };
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    owner
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .await
        .unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("GROUP_UPDATED"), "{text}");
}
