-- pgcutover demo: a small shop, about 400 000 rows.
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');

CREATE TABLE customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id      serial PRIMARY KEY,
    sku     text NOT NULL UNIQUE,
    price   numeric(10, 2) NOT NULL,
    attrs   jsonb
);

CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers,
    status       order_status NOT NULL DEFAULT 'new',
    total        numeric(12, 2),
    placed_at    timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON orders (customer_id);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders,
    line        int NOT NULL,
    product_id  int NOT NULL REFERENCES products,
    qty         int NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, line)
);

CREATE TABLE events (
    id       bigint NOT NULL,
    at       timestamptz NOT NULL,
    kind     text NOT NULL,
    payload  jsonb,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');

INSERT INTO customers (email, name, created_at)
SELECT 'user' || g || '@example.com', 'Customer ' || g, '2024-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 20000) g;

INSERT INTO products (sku, price, attrs)
SELECT 'SKU-' || g, (g % 500) + 0.99, jsonb_build_object('colour', (ARRAY['red','green','blue'])[g % 3 + 1], 'weight', g % 40)
  FROM generate_series(1, 1000) g;

INSERT INTO orders (customer_id, status, total, placed_at)
SELECT (g % 20000) + 1, (ARRAY['new','paid','shipped','cancelled']::order_status[])[g % 4 + 1],
       (g % 1000) * 1.25, '2025-01-01'::timestamptz + g * interval '5 minutes'
  FROM generate_series(1, 100000) g;

INSERT INTO order_items (order_id, line, product_id, qty)
SELECT (g + 1) / 2, g % 2 + 1, (g % 1000) + 1, g % 5 + 1
  FROM generate_series(1, 200000) g;

INSERT INTO events (id, at, kind, payload)
SELECT g, '2025-01-01'::timestamptz + g * interval '10 minutes', (ARRAY['view','click','buy'])[g % 3 + 1],
       jsonb_build_object('n', g)
  FROM generate_series(1, 80000) g;

ANALYZE;
