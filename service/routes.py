"""The route table: every URL the service answers, each with a name used to build links."""

import re

from aiohttp import web

from service import metrics
from service.handlers import auth, batch, changes, docs, health, sessions, tasks, tokens, trash, webhooks

# `{user_id}` is any one path segment: the caller's number, `me`, or a provider's user's `sub`.
# The auth middleware resolves it to the caller or answers 403 (service/auth.py).
USER = "/api/{user_id}"
USER_TASKS = USER + "/tasks"
USER_TASK = USER_TASKS + "/{task_id:[0-9]+}"
USER_TRASH = USER + "/trash"
TRASHED_TASK = USER_TRASH + "/{task_id:[0-9]+}"
SESSION = "/api/auth/sessions/{session_id:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}}"
DOCS_ASSET = "/docs/{asset:" + "|".join(map(re.escape, docs.ASSET_TYPES)) + "}"
API_TOKEN = "/api/auth/tokens/{token_id:[0-9]+}"
USER_WEBHOOKS = USER + "/webhooks"
USER_WEBHOOK = USER_WEBHOOKS + "/{webhook_id:[0-9]+}"


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", docs.root, name="root", allow_head=False)
    router.add_get("/openapi.yaml", docs.openapi, name="openapi", allow_head=False)
    router.add_get("/docs", docs.docs, name="docs", allow_head=False)
    router.add_get(DOCS_ASSET, docs.docs_asset, name="docs_asset", allow_head=False)
    router.add_get("/healthz", health.healthz, name="healthz", allow_head=False)
    router.add_get("/readyz", health.readyz, name="readyz", allow_head=False)
    router.add_get("/metrics", metrics.metrics, name="metrics", allow_head=False)
    router.add_post("/api/auth/register", auth.register, name="register")
    router.add_post("/api/auth/login", auth.login, name="login")
    router.add_get("/api/auth/me", auth.me, name="me", allow_head=False)
    router.add_patch("/api/auth/me", auth.update_me, name="update_me")
    router.add_delete("/api/auth/me", auth.delete_account, name="delete_account")
    router.add_get("/api/auth/me/export", auth.export_account, name="export_account", allow_head=False)
    router.add_get("/api/auth/tokens", tokens.list_tokens, name="api_tokens", allow_head=False)
    router.add_post("/api/auth/tokens", tokens.create_token, name="create_api_token")
    router.add_delete(API_TOKEN, tokens.delete_token, name="delete_api_token")
    router.add_put("/api/auth/password", auth.change_password, name="change_password")
    router.add_post("/api/auth/refresh", sessions.refresh, name="refresh")
    router.add_post("/api/auth/logout", sessions.logout, name="logout")
    router.add_get("/api/auth/sessions", sessions.list_sessions, name="sessions", allow_head=False)
    router.add_delete("/api/auth/sessions", sessions.end_all_sessions, name="end_all_sessions")
    router.add_delete(SESSION, sessions.end_session, name="end_session")
    router.add_get(USER_TASKS, tasks.list_tasks, name="tasks", allow_head=False)
    router.add_post(USER_TASKS, tasks.create_task, name="create_task")
    router.add_get(USER_TASK, tasks.get_task, name="task", allow_head=False)
    router.add_put(USER_TASK, tasks.update_task, name="update_task")
    router.add_delete(USER_TASK, tasks.delete_task, name="delete_task")
    router.add_patch(USER_TASK + "/complete", tasks.complete_task, name="complete_task")
    router.add_post(USER_TASKS + "/batch", batch.run_batch, name="batch")
    router.add_get(USER + "/changes", changes.list_changes, name="changes", allow_head=False)
    router.add_get(USER_TRASH, trash.list_trash, name="trash", allow_head=False)
    router.add_delete(USER_TRASH, trash.empty_trash, name="empty_trash")
    router.add_delete(TRASHED_TASK, trash.purge_task, name="purge_task")
    router.add_post(TRASHED_TASK + "/restore", trash.restore_task, name="restore_task")
    router.add_get(USER_WEBHOOKS, webhooks.list_webhooks, name="webhooks", allow_head=False)
    router.add_post(USER_WEBHOOKS, webhooks.create_webhook, name="create_webhook")
    router.add_get(USER_WEBHOOK, webhooks.get_webhook, name="webhook", allow_head=False)
    router.add_patch(USER_WEBHOOK, webhooks.update_webhook, name="update_webhook")
    router.add_delete(USER_WEBHOOK, webhooks.delete_webhook, name="delete_webhook")
    router.add_post(USER_WEBHOOK + "/test", webhooks.test_webhook, name="test_webhook")
    router.add_get(
        USER_WEBHOOK + "/deliveries", webhooks.webhook_deliveries, name="webhook_deliveries", allow_head=False
    )
