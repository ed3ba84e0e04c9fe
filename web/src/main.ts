/**
 * @module The dashboard's entry: sign-in, the navigation and a hash router (`#/runs`,
 * `#/runs/<model id>`, `#/checkpoints`, `#/playground`, `#/service`). Each page returns a function
 * that stops its polling when another page replaces it.
 */
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { errorText, h, show } from './dom.js';
import { checkpointsPage } from './pages/checkpoints.js';
import { playgroundPage } from './pages/playground.js';
import { runPage, runsPage } from './pages/runs.js';
import { servicePage } from './pages/service.js';
import { restore, signIn, signOut, type Session } from './session.js';

const app = document.getElementById('app')!;
let session = restore();
let leave: () => void = () => {};

function signInPage(): void {
  const key = h('input', { name: 'api-key', type: 'password', placeholder: 'tml-…', autocomplete: 'off', size: 40 });
  const status = h('p', { class: 'status' });
  const form = h('form', { class: 'sign-in' }, h('h2', {}, 'Sign in'), h('p', {}, 'Paste an API key (`lathe keys create NAME`). You see that key\'s runs and checkpoints.'), key, h('button', { type: 'submit' }, 'Sign in'), status);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    status.textContent = '';
    signIn(key.value)
      .then((signedIn) => {
        session = signedIn;
        location.hash = '#/runs';
        route();
      })
      .catch((error: unknown) => {
        status.textContent = `Sign-in failed: ${errorText(error)}`;
        status.className = 'error';
      });
  });
  show(app, form);
}

const PAGES: [RegExp, (root: Element, s: Session, match: RegExpMatchArray) => () => void][] = [
  [/^#\/runs\/(.+)$/, (root, s, m) => runPage(root, s, decodeURIComponent(m[1]!))],
  [/^#\/checkpoints$/, (root, s) => checkpointsPage(root, s)],
  [/^#\/playground$/, (root, s) => playgroundPage(root, s)],
  [/^#\/service$/, (root, s) => servicePage(root, s)],
  [/^/, (root, s) => runsPage(root, s)],
];

function route(): void {
  leave();
  leave = () => {};
  if (!session) return signInPage();
  const current = session;
  const nav = h(
    'nav',
    {},
    ...['runs', 'checkpoints', 'playground', 'service'].map((page) => h('a', { href: `#/${page}`, class: location.hash.startsWith(`#/${page}`) ? 'active' : undefined }, page[0]!.toUpperCase() + page.slice(1))),
    h('button', { class: 'sign-out', onclick: () => void signOut(current).then(() => ((session = undefined), route())) }, 'Sign out'),
  );
  const main = h('main');
  show(app, h('header', {}, h('h1', {}, 'Lathe'), nav), main);
  for (const [pattern, page] of PAGES) {
    const match = location.hash.match(pattern);
    if (match) {
      leave = page(main, current, match);
      return;
    }
  }
}

window.addEventListener('hashchange', route);
route();
