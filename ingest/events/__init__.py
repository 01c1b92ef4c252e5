"""Server-Sent Events: a purchase's state and a SKU's availability, pushed as they change.

`routes`: the two streams (`GET /v1/purchases/{id}/events`, `GET /v1/skus/{sku}/events`);
`sse`: the wire format (frames, event ids and their order, opening a stream); `sku_feeds`: one
feed per SKU, written to every listener's transport, and the process's SKU stream places.
"""
