"""The Task API: a multi-user todo task REST service on aiohttp, asyncpg and PostgreSQL."""
