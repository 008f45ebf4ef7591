-- The database's roles: one login role per service, owning its schema and
-- nothing else, and an admin role that reads every schema (for the tools).
-- Run as a superuser on the platform's database, by build-support/run and the
-- tests (the Kubernetes overlays do not run it yet); idempotent, so running it
-- again rotates the passwords.
--
-- Its parameters are custom settings of the session, so that the same file
-- runs under psql and from Rust, with no value pasted into the SQL:
--   foodorder.orders_role, foodorder.orders_password                 (order-api)
--   foodorder.payments_role, foodorder.payments_password             (payment-service)
--   foodorder.notifications_role, foodorder.notifications_password   (notification-service)
--   foodorder.admin_role, foodorder.admin_password                   (tools: read-only)
-- A password is never part of an error this script raises.
-- e.g. PGOPTIONS='-c foodorder.orders_role=foodorder_orders -c foodorder.orders_password=…' psql -f roles.sql
--
-- What it leaves:
--   * each service role: LOGIN, no superuser, no CREATEDB/CREATEROLE/
--     REPLICATION/BYPASSRLS, no inherited rights; CONNECT and TEMPORARY on
--     this database; the owner of its schema and of everything in it (so it
--     runs its own migrations); no right on any other schema, and nothing may
--     be created in `public` by anyone but its owner;
--   * the admin role: LOGIN, no inherited rights, CONNECT on this database,
--     USAGE on the three schemas and SELECT on their tables (those made
--     later too: default privileges of each service role), nothing else;
--   * PUBLIC: no CONNECT and no TEMPORARY on this database.
DO $provision$
DECLARE
    service record;
    role_name text;
    object record;
    admin_name text := current_setting('foodorder.admin_role');
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE 'REVOKE CREATE ON SCHEMA public FROM PUBLIC';
    FOR service IN SELECT * FROM (VALUES ('orders'), ('payments'), ('notifications')) AS s (schema_name)
    LOOP
        role_name := current_setting(format('foodorder.%s_role', service.schema_name));
        IF role_name = '' OR current_setting(format('foodorder.%s_password', service.schema_name)) = '' THEN
            RAISE EXCEPTION 'foodorder.%_role and foodorder.%_password must both be set',
                service.schema_name, service.schema_name;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I', role_name);
        END IF;
        BEGIN
            EXECUTE format(
                'ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT PASSWORD %L',
                role_name, current_setting(format('foodorder.%s_password', service.schema_name)));
        EXCEPTION WHEN OTHERS THEN
            -- Without the statement, which holds the password.
            RAISE EXCEPTION 'cannot set up role %: %', role_name, SQLERRM USING ERRCODE = SQLSTATE;
        END;
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), role_name);
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service.schema_name, role_name);
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', service.schema_name, role_name);
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', service.schema_name);
        -- What an earlier superuser-run migration made in the schema changes
        -- hands (tables, their sequences, views, functions); indexes follow.
        FOR object IN
            SELECT c.relname, c.relkind FROM pg_class c
            WHERE c.relnamespace = service.schema_name::regnamespace
              AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND pg_get_userbyid(c.relowner) <> role_name
        LOOP
            EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', service.schema_name, object.relname, role_name);
        END LOOP;
        FOR object IN
            SELECT c.relname FROM pg_class c
            WHERE c.relnamespace = service.schema_name::regnamespace AND c.relkind = 'S'
              AND pg_get_userbyid(c.relowner) <> role_name
              AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
        LOOP
            EXECUTE format('ALTER SEQUENCE %I.%I OWNER TO %I', service.schema_name, object.relname, role_name);
        END LOOP;
        FOR object IN
            SELECT p.oid::regprocedure AS signature FROM pg_proc p
            WHERE p.pronamespace = service.schema_name::regnamespace
              AND pg_get_userbyid(p.proowner) <> role_name
        LOOP
            EXECUTE format('ALTER ROUTINE %s OWNER TO %I', object.signature, role_name);
        END LOOP;
    END LOOP;
    IF admin_name = '' OR current_setting('foodorder.admin_password') = '' THEN
        RAISE EXCEPTION 'foodorder.admin_role and foodorder.admin_password must both be set';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = admin_name) THEN
        EXECUTE format('CREATE ROLE %I', admin_name);
    END IF;
    BEGIN
        EXECUTE format(
            'ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT PASSWORD %L',
            admin_name, current_setting('foodorder.admin_password'));
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'cannot set up role %: %', admin_name, SQLERRM USING ERRCODE = SQLSTATE;
    END;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), admin_name);
    -- Reads the three schemas' tables, now and later, and nothing else (not
    -- pg_read_all_data, which would also let it read pg_authid's password
    -- verifiers); an earlier version's membership is taken back.
    IF EXISTS (SELECT FROM pg_auth_members m WHERE m.roleid = 'pg_read_all_data'::regrole
               AND m.member = admin_name::regrole) THEN
        EXECUTE format('REVOKE pg_read_all_data FROM %I', admin_name);
    END IF;
    FOR service IN SELECT * FROM (VALUES ('orders'), ('payments'), ('notifications')) AS s (schema_name)
    LOOP
        role_name := current_setting(format('foodorder.%s_role', service.schema_name));
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', service.schema_name, admin_name);
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', service.schema_name, admin_name);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
            role_name, service.schema_name, admin_name);
    END LOOP;
    -- A database upgraded across the split keeps the shared history in
    -- public: the services read it to see that the split is done.
    IF to_regclass('public._sqlx_migrations') IS NOT NULL THEN
        FOR service IN SELECT * FROM (VALUES ('orders'), ('payments'), ('notifications')) AS s (schema_name)
        LOOP
            EXECUTE format('GRANT SELECT ON public._sqlx_migrations TO %I',
                current_setting(format('foodorder.%s_role', service.schema_name)));
        END LOOP;
    END IF;
END
$provision$;
