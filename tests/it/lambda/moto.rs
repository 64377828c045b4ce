//! The moto server and the fixture every test starts from: a function with published
//! versions 1, 2 and 3 and the alias `live` → 1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_lambda::config::Credentials;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use rollgate::metrics::cloudwatch::Cloudwatch;
use rollgate::targets::lambda::{AliasState, AwsAccess, LambdaTarget};

use super::relay::CborRelay;

pub const REGION: &str = "eu-west-1";

/// A moto server: the one `.ci/test` started, or our own.
pub struct Moto {
    pub endpoint: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn answers(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut first = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok()
        && s.read_exact(&mut first).is_ok()
        && first.starts_with(b"HTTP/1.")
}

pub fn moto() -> Moto {
    if let Ok(endpoint) = std::env::var("ROLLGATE_MOTO_ENDPOINT")
        && !endpoint.is_empty()
    {
        assert!(
            answers(&endpoint),
            "ROLLGATE_MOTO_ENDPOINT={endpoint} does not answer; run the README test command (bash .ci/test)"
        );
        return Moto {
            endpoint,
            child: None,
        };
    }
    let port = super::support::free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need moto in server mode: run the README test command (bash .ci/test), \
                 which installs moto[server], starts it and sets ROLLGATE_MOTO_ENDPOINT \
                 (moto_server is not on PATH: {e})"
            )
        });
    let moto = Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(&moto.endpoint) {
        assert!(
            Instant::now() < deadline,
            "moto_server did not answer on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    moto
}

/// Fake static credentials on the clients' configuration (never the process env).
pub fn creds() -> Credentials {
    Credentials::new("testing", "testing", None, None, "rollgate-tests")
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// An empty but valid zip archive whose comment makes each upload's code differ.
fn zip(comment: &str) -> Vec<u8> {
    let mut z = b"PK\x05\x06".to_vec();
    z.extend([0u8; 16]);
    z.extend(u16::try_from(comment.len()).expect("short").to_le_bytes());
    z.extend(comment.as_bytes());
    z
}

/// A function with published versions 1, 2 and 3 and the alias `live` → 1, on moto.
pub struct Fixture {
    pub moto: Moto,
    /// CloudWatch for the current SDK (CBOR), in front of moto (JSON).
    pub relay: CborRelay,
    pub rt: tokio::runtime::Runtime,
    pub lambda: aws_sdk_lambda::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub function: String,
}

impl Fixture {
    pub fn new(tag: &str) -> Self {
        let moto = moto();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let access = AwsAccess {
            region: REGION.to_owned(),
            endpoint: Some(moto.endpoint.clone()),
            profile: None,
        };
        let config = rt.block_on(access.load(Some(&creds()), Duration::from_secs(20)));
        let lambda = aws_sdk_lambda::Client::new(&config);
        let relay = CborRelay::start(&moto.endpoint);
        let relayed = AwsAccess {
            endpoint: Some(relay.endpoint.clone()),
            ..access
        };
        let config = rt.block_on(relayed.load(Some(&creds()), Duration::from_secs(20)));
        let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
        let function = unique(tag);
        let role = create_role(&moto.endpoint, &function);
        rt.block_on(async {
            lambda
                .create_function()
                .function_name(&function)
                .runtime(Runtime::Python312)
                .role(role)
                .handler("index.handler")
                .code(
                    FunctionCode::builder()
                        .zip_file(Blob::new(zip("v1")))
                        .build(),
                )
                .publish(true)
                .send()
                .await
                .expect("create function (version 1)");
            for v in ["v2", "v3"] {
                lambda
                    .update_function_code()
                    .function_name(&function)
                    .zip_file(Blob::new(zip(v)))
                    .publish(true)
                    .send()
                    .await
                    .expect("publish a version");
            }
            lambda
                .create_alias()
                .function_name(&function)
                .name("live")
                .function_version("1")
                .send()
                .await
                .expect("create alias live → 1");
        });
        Self {
            moto,
            relay,
            rt,
            lambda,
            cloudwatch,
            function,
        }
    }

    /// Lambda (moto itself).
    pub fn endpoint(&self) -> &str {
        &self.moto.endpoint
    }

    /// The alias as the Lambda API shows it.
    pub fn alias(&self) -> AliasState {
        let out = self
            .rt
            .block_on(
                self.lambda
                    .get_alias()
                    .function_name(&self.function)
                    .name("live")
                    .send(),
            )
            .expect("get alias");
        AliasState {
            version: out.function_version().expect("version").to_owned(),
            weights: out
                .routing_config()
                .and_then(|r| r.additional_version_weights())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
        }
    }

    /// Lambda's metrics for invocations of `function:live` that ran `version`, a few
    /// seconds ago (what Lambda itself would publish).
    pub fn publish_metrics(&self, version: &str, invocations: f64, errors: f64, durations: &[f64]) {
        let dims = [
            ("FunctionName", self.function.clone()),
            ("Resource", format!("{}:live", self.function)),
            ("ExecutedVersion", version.to_owned()),
        ];
        let at = aws_sdk_cloudwatch::primitives::DateTime::from(
            SystemTime::now() - Duration::from_secs(5),
        );
        let datum = |name: &str, unit: StandardUnit| {
            let mut d = MetricDatum::builder()
                .metric_name(name)
                .timestamp(at)
                .unit(unit);
            for (k, v) in &dims {
                d = d.dimensions(Dimension::builder().name(*k).value(v).build());
            }
            d
        };
        let mut data = vec![
            datum("Invocations", StandardUnit::Count)
                .value(invocations)
                .build(),
            datum("Errors", StandardUnit::Count).value(errors).build(),
            datum("Throttles", StandardUnit::Count).value(0.0).build(),
        ];
        if !durations.is_empty() {
            let mut d = datum("Duration", StandardUnit::Milliseconds);
            for x in durations {
                d = d.values(*x).counts(1.0);
            }
            data.push(d.build());
        }
        self.rt
            .block_on(
                self.cloudwatch
                    .put_metric_data()
                    .namespace("AWS/Lambda")
                    .set_metric_data(Some(data))
                    .send(),
            )
            .expect("put metric data");
    }

    /// A `lambda` target whose settings point at moto.
    pub fn target(&self) -> LambdaTarget {
        self.target_via(self.endpoint())
    }

    /// A `lambda` target whose settings point at `endpoint` (a shim in front of moto).
    pub fn target_via(&self, endpoint: &str) -> LambdaTarget {
        LambdaTarget::new(Some(endpoint.to_owned()), None)
            .expect("target")
            .with_credentials(creds())
    }

    pub fn cloudwatch_source(&self) -> Cloudwatch {
        Cloudwatch::new(
            AwsAccess {
                region: REGION.to_owned(),
                endpoint: Some(self.relay.endpoint.clone()),
                profile: None,
            },
            Duration::from_secs(20),
        )
        .expect("source")
        .with_credentials(creds())
    }
}

/// moto checks that a function's role exists: IAM `CreateRole` as a plain query call.
fn create_role(endpoint: &str, name: &str) -> String {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let body = format!(
        "Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument=%7B%7D"
    );
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).expect("moto");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "CreateRole: {out}");
    format!("arn:aws:iam::123456789012:role/{name}")
}
