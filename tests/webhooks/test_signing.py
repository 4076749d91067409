"""Standard Webhooks signatures, checked against the spec's vector and the reference verifier."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks

from agentcore.webhooks import signing

# The example of the Standard Webhooks spec (and Svix's libraries' tests).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_spec_vector() -> None:
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_generated_secrets_are_whsec_base64_of_enough_random_bytes() -> None:
    first, second = signing.generate_secret(), signing.generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    key = base64.b64decode(first.removeprefix("whsec_"), validate=True)
    assert len(key) >= 24


def test_reference_verifier_accepts_our_headers() -> None:
    secret = signing.generate_secret()
    verifier = standardwebhooks.Webhook(secret)
    # The reference library checks the timestamp against its own clock: sign "now".
    now = int(time.time())
    headers = signing.headers([secret], "msg_1", now, BODY)
    assert verifier.verify(BODY, headers) == {"test": 2432232314}


def test_rotation_sends_one_signature_per_secret_and_each_verifies() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    now = int(time.time())
    headers = signing.headers([new, old], "msg_2", now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(signing.generate_secret()).verify(BODY, headers)


def test_a_changed_body_or_id_fails_verification() -> None:
    secret = signing.generate_secret()
    headers = signing.headers([secret], "msg_3", TIMESTAMP, BODY)
    signing.verify(secret, BODY, headers, now=TIMESTAMP)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(secret, BODY + b" ", headers, now=TIMESTAMP)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(secret, BODY, {**headers, "webhook-id": "msg_4"}, now=TIMESTAMP)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(secret, BODY, headers, now=TIMESTAMP + 301)


@pytest.mark.parametrize(
    "secret",
    ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_" + "QUJD", ""],
)
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        signing.secret_key(secret)
