"""`python -m bench.baselines.echo --port N [--database-url URL]`; see app.py."""

from bench.baselines.app import main

if __name__ == "__main__":
    main("echo")
