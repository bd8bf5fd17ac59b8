"""Use the client that openapi-python-client generated from extpresence's OpenAPI document
against a running extpresence: set a status, then read it back, through the generated code only.

usage: openapi_client.py <dir holding the generated package extpresence_client> <base URL> <API key> <user JID>

Prints one JSON line: what the set answered and what the read gave. Exits non-zero (assertion)
when an answer is not the documented type or says something else than was set.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

from extpresence_client import AuthenticatedClient  # noqa: E402
from extpresence_client.api.v1 import get_status, put_status  # noqa: E402
from extpresence_client.models import (  # noqa: E402
    Presence,
    StatusAnswer,
    StatusUpdate,
    UserAnswer,
)

base_url, key, user = sys.argv[2], sys.argv[3], sys.argv[4]
# The document's scheme is the Api-Key header.
client = AuthenticatedClient(
    base_url=base_url, token=key, prefix="", auth_header_name="Api-Key"
)
with client:
    set_answer = put_status.sync(
        jid=user,
        client=client,
        body=StatusUpdate(
            presence=Presence.DND,
            status="On a call",
            source="pbx",
            resource="phone",
            expires_in=3600,
        ),
    )
    assert isinstance(set_answer, StatusAnswer), set_answer
    assert set_answer.effective.presence == Presence.DND, set_answer
    held = get_status.sync(jid=user, client=client)
    assert isinstance(held, UserAnswer), held
    [resource] = held.resources
    assert resource.resource == "phone", held
    assert resource.effective.status == "On a call", held
    assert [s.source for s in resource.sources] == ["pbx"], held
    print(json.dumps({"set": set_answer.to_dict(), "held": held.to_dict()}))
