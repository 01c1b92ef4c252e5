"""The wire contract shared by every flashsale process: messages, subjects, sharding. No I/O."""
