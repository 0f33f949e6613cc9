"""A small Django project served by uvicorn in the demo and the end-to-end tests.

A request carries its id in the `X-Request-Id` header. A sync and an async
`request_started` receiver put it in context (a ContextVar and an
`asgiref.local.Local` attribute; a third notes the time), the middleware records it from the header
(the truth), the views answer what they see, and a sync and an async
`request_finished` receiver record what they see in EVENTS, served at
/events/.
"""
