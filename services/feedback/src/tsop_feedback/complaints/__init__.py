"""Complaints (§4.3), improvement actions (§4.4) and the internal assessment of tickets (§2.3, §4.2).

A bounded context of its own inside feedback, in the one shape: ``domain`` (the complaint, the improvement
action, the assessment and the operator's policy: pure), ``commands`` (use cases), ``views`` (the complaint
board and its durable deadline timer), ``wire`` (their events on the ``complaints`` topic), ``policies``
(what the bus opens: a low rating that was solved, a complaint-type ticket, a pattern of low scores, an
incident review), ``projection`` (the quality facts per ticket and the inbox the policies fill) and
``api`` (the routes). Its events share feedback's event store and relay.
"""
