"""`python -m bench.baselines.redis_seckill --port N --redis-url URL`; see app.py and seckill.py."""

from bench.baselines.app import main

if __name__ == "__main__":
    main("redis")
