from services.infra.sqlscript import split_statements


def test_splits_on_semicolons_outside_bodies_quotes_and_comments() -> None:
    script = """
    CREATE TABLE a (x text DEFAULT 'a;b'); -- a comment; with a semicolon
    CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'no; never'; END $$;
    SELECT 1
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[0] == "CREATE TABLE a (x text DEFAULT 'a;b')"
    assert "RAISE EXCEPTION 'no; never'; END $$" in statements[1]
    assert statements[2] == "SELECT 1"
