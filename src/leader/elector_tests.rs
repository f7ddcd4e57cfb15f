//! The elector against a mock API server whose every answer takes 3 s: a follower still takes
//! over an expired lease, and then keeps it.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use tower_test::mock;

use super::*;

/// The stored Lease, and the requests served (method, when answered).
#[derive(Default)]
struct Server {
    lease: Option<Lease>,
    served: Vec<(Method, Instant)>,
}

fn status(code: u16) -> Vec<u8> {
    let s = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": "x"});
    serde_json::to_vec(&s).unwrap()
}

/// Answers every request `delay` after it arrives: GET with the stored Lease, PUT by storing it
/// if its resourceVersion is current (409 otherwise).
async fn serve(
    mut handle: mock::Handle<Request<Body>, Response<Body>>,
    server: Arc<Mutex<Server>>,
    delay: Duration,
) {
    while let Some((req, send)) = handle.next_request().await {
        let server = server.clone();
        tokio::spawn(async move {
            let method = req.method().clone();
            let body = req.into_body().collect_bytes().await.unwrap();
            tokio::time::sleep(delay).await;
            let mut s = server.lock().unwrap();
            s.served.push((method.clone(), Instant::now()));
            let (code, json) = match (method, s.lease.clone()) {
                (Method::GET, Some(l)) => (200, serde_json::to_vec(&l).unwrap()),
                (Method::PUT, Some(old)) => {
                    let mut l: Lease = serde_json::from_slice(&body).unwrap();
                    if l.metadata.resource_version != old.metadata.resource_version {
                        (409, status(409))
                    } else {
                        let rv: u64 = old.metadata.resource_version.unwrap().parse().unwrap();
                        l.metadata.resource_version = Some((rv + 1).to_string());
                        s.lease = Some(l.clone());
                        (200, serde_json::to_vec(&l).unwrap())
                    }
                }
                _ => (404, status(404)),
            };
            send.send_response(Response::builder().status(code).body(Body::from(json)).unwrap());
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_over_and_keeps_the_lease_when_answers_take_3_s() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let held = LeaseSpec {
        holder_identity: Some("dead".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(held),
    };
    let server = Arc::new(Mutex::new(Server { lease: Some(lease), served: vec![] }));
    tokio::spawn(serve(handle, server.clone(), Duration::from_secs(3)));
    let gate = Gate::elected();
    let elector = Elector::new(Client::new(service, "default"), "ns", "me".into(), Timings::default());
    let start = Instant::now();
    let run = tokio::spawn(elector.run(gate.clone(), std::future::pending()));

    tokio::time::timeout(Duration::from_secs(60), gate.wait_until(true)).await.expect("took over");
    let took = start.elapsed();
    // Seen first 3 s in, expired 15 s later; the next read and the write take 3 s each.
    assert!(took >= Duration::from_secs(18) && took <= Duration::from_secs(30), "took over after {took:?}");
    let holder = server.lock().unwrap().lease.as_ref().and_then(|l| l.spec.clone()?.holder_identity);
    assert_eq!(holder.as_deref(), Some("me"));

    let led = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(60), gate.wait_until(false)).await;
    assert!(lost.is_err(), "lost the lease {:?} after taking it", led.elapsed());
    assert!(!run.is_finished(), "the elector stopped");
    let s = server.lock().unwrap();
    let after: Vec<&Method> = s.served.iter().filter(|(_, at)| *at > led).map(|(m, _)| m).collect();
    assert!(after.iter().all(|m| **m == Method::PUT), "a leader renews without reading: {after:?}");
    // One 3 s write every retry period: a renewal every 5 s.
    assert!(after.len() >= 11, "{} renewals in 60 s", after.len());
}
