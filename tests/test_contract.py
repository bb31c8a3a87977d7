"""openapi.yaml and the app agree: the same routes, and the same routes open without a token."""

from service.app import create_app
from service.auth import OPTIONAL_TOKEN_ROUTES, PUBLIC_ROUTES
from service.settings import Settings
from tests.conftest import SPEC_DOCUMENT, TEST_SECRET

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _spec_operations() -> dict[tuple[str, str], dict]:
    return {
        (method.upper(), path): operation
        for path, item in SPEC_DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_the_spec_lists_exactly_the_apps_routes() -> None:
    app = create_app(Settings(database_url="postgresql://unused", jwt_secret=TEST_SECRET))
    routes = {(route.method, route.resource.canonical): route.name for route in app.router.routes()}
    assert set(routes) == set(_spec_operations())


def test_public_operations_are_exactly_the_public_routes() -> None:
    app = create_app(Settings(database_url="postgresql://unused", jwt_secret=TEST_SECRET))
    routes = {(route.method, route.resource.canonical): route.name for route in app.router.routes()}
    public_in_spec = {
        routes[key] for key, operation in _spec_operations().items() if operation.get("security") == []
    }
    assert public_in_spec == PUBLIC_ROUTES
    optional_in_spec = {
        routes[key]
        for key, operation in _spec_operations().items()
        if {} in operation.get("security", []) and operation["security"] != []
    }
    assert optional_in_spec == OPTIONAL_TOKEN_ROUTES
