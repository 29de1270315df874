"""certbot's output reduced to the line a failed status shows (intunnel.certs.acme.reason_from)."""

from __future__ import annotations

from intunnel.certs import acme
from intunnel.settings import load_settings

VALIDATION = """Saving debug log to /var/lib/intunnel-certs/logs/letsencrypt.log
Requesting a certificate for stale.customer.test

Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported these problems:
  Domain: stale.customer.test
  Type:   connection
  Detail: [::1]: Fetching http://stale.customer.test/.well-known/acme-challenge/x: Connection refused

Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile for details.
"""

UNEXPECTED = """Saving debug log to /tmp/l.log
An unexpected error occurred:
Error creating new order :: too many certificates already issued
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile for details.
"""


def test_the_cas_problem():
    assert acme.reason_from(VALIDATION) == ("the CA could not validate the name (connection): [::1]: Fetching "
                                            "http://stale.customer.test/.well-known/acme-challenge/x: Connection refused")


def test_an_unexpected_error():
    assert acme.reason_from(UNEXPECTED) == "Error creating new order :: too many certificates already issued"


def test_anything_else_gives_its_last_useful_line():
    assert acme.reason_from("usage: certbot ...\ncertbot: error: unrecognized arguments: --bogus\n") == \
        "certbot: error: unrecognized arguments: --bogus"
    assert acme.reason_from("") == "certbot failed without saying why"


def test_staging_switch():
    settings = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={})
    assert acme.directory(settings) == acme.LETSENCRYPT
    assert acme.directory(settings.replace(acme_staging=True)) == acme.LETSENCRYPT_STAGING
    other = settings.replace(acme_directory="https://ca.internal/acme/directory", acme_staging=True)
    assert acme.directory(other) == "https://ca.internal/acme/directory"   # staging means Let's Encrypt's
